"""apply(plan): the only writer of configuration; one transaction, one generation, dependency order."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import Connection

from listkeeper.store import config as applied_config
from listkeeper.store import events, subscribers
from listkeeper.store.config import AppliedResource

from .desired import spec_hash
from .plan import KIND_ORDER, Action, Plan


class ApplyError(Exception):
    """Nothing was applied; the message names the resource and the reason."""


def check_references(plan: Plan, applied: Mapping[tuple[str, str], AppliedResource]) -> None:
    """After the plan, every route must still name an existing relay."""
    final = {key: dict(a.spec) for key, a in applied.items()}
    for c in plan.changes:
        if c.action is Action.delete and not c.held_back:
            final.pop(c.key, None)
        elif c.action in (Action.create, Action.update):
            if c.previous_name:
                final.pop((c.kind, c.previous_name), None)
            final[c.key] = dict(c.after)
    relays = {name for kind, name in final if kind == "Relay"}
    for (kind, name), spec in final.items():
        if kind != "RoutingTable":
            continue
        for i, route in enumerate(spec.get("routes", [])):
            if route.get("transport") == "relay" and route.get("relay") not in relays:
                raise ApplyError(f"cannot delete Relay/{route.get('relay')}: RoutingTable/{name} "
                                 f"(spec.routes[{i}]) still references it")


def apply(plan: Plan, conn: Connection, now: float,
          applied: Mapping[tuple[str, str], AppliedResource] | None = None) -> int | None:
    """Write the plan in the caller's transaction; returns the new generation, or None when nothing changed."""
    if applied is not None:
        check_references(plan, applied)
    ordered = sorted(plan.changes, key=lambda c: (KIND_ORDER.get(c.kind, 9), c.name))
    upserts = [
        applied_config.ResourceWrite(c.kind, c.name, dict(c.after), spec_hash(dict(c.after)), c.source,
                                     dict(c.annotations), c.previous_name)
        for c in ordered if c.action in (Action.create, Action.update)
    ]
    deletes = [c.key for c in reversed(ordered) if c.action is Action.delete and not c.held_back]
    if not upserts and not deletes:
        return None
    try:
        generation = applied_config.write_resources(conn, upserts, deletes, now)
        for item in upserts:
            if item.kind != "MailingList":
                continue
            subscribers.sync_manifest(conn, item.name, item.spec.get("subscribers", []), now)
            events.drop_events_except(conn, item.name, ["join", "post", *(e["name"] for e in item.spec.get("events", []))])
        return generation
    except applied_config.ResourceWriteFailed as exc:  # the transaction rolls back
        raise ApplyError(f"applying failed at {exc}; nothing was changed") from exc

