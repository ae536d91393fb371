"""apply(plan): the only writer of configuration; one transaction, one generation."""

from __future__ import annotations

from listkeeper.store import Store
from listkeeper.store import config as applied_config

from .desired import spec_hash
from .plan import Action, Plan


def apply(plan: Plan, store: Store) -> int | None:
    """Apply the plan; returns the new generation, or None when nothing changed."""
    upserts = [
        applied_config.ResourceWrite(c.kind, c.name, dict(c.after), spec_hash(dict(c.after)), c.source)
        for c in plan.changes if c.action in (Action.create, Action.update)
    ]
    deletes = [c.key for c in plan.changes if c.action is Action.delete and not c.held_back]
    if not upserts and not deletes:
        return None
    with store.engine.begin() as conn:
        return applied_config.write_resources(conn, upserts, deletes, store.now())
