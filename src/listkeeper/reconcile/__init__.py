"""Reconcile: desired state from manifests, diffed against the store's applied state, then applied.

`review` reads; `reconcile` locks, reviews and applies in one transaction, so the plan shown is
exactly what is written; `apply_saved` applies a saved plan unless the store moved on since."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from listkeeper.manifests import Manifests
from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store import queue as store_queue

from .apply import ApplyError, apply, check_references
from .desired import DesiredResource, desired_state
from .impact import NO_STORE_NOTE, Impact, RuntimeFacts, impacts
from .plan import Action, Plan, plan
from .render import render_text
from .render_json import render_json

DAY = 86400.0


@dataclass(frozen=True)
class Review:
    plan: Plan
    impacts: tuple[Impact, ...]
    note: str | None = None
    against: str | None = None

    def text(self) -> str:
        return render_text(self.plan, self.impacts, self.note)

    def json(self) -> str:
        return render_json(self.plan, self.impacts, self.note, self.against)


class StalePlan(Exception):
    pass


def runtime_facts(conn: Connection) -> RuntimeFacts:
    return RuntimeFacts(store_queue.pending_by_list(conn), store_queue.held_counts(conn),
                        store_queue.pending_domains(conn))


def _routes_after(desired: Mapping[tuple[str, str], DesiredResource]):
    table = next((d for (kind, _), d in desired.items() if kind == "RoutingTable"), None)
    return table.spec if table else None


def _expired(deleted, now: float, retention_days: float) -> tuple[Impact, ...]:
    return tuple(Impact(kind, name, f"deleted {(now - d.deleted_at) / DAY:.0f} days ago; the retention period "
                        "is over: its runtime data will be purged")
                 for (kind, name), d in sorted(deleted.items())
                 if d.deleted_at is not None and d.deleted_at < now - retention_days * DAY)


def review_in(conn: Connection, desired, prune: bool, now: float, retention_days: float) -> Review:
    base = applied_config.generation(conn)
    applied = applied_config.applied_resources(conn)
    deleted = applied_config.deleted_resources(conn)
    result = plan(desired, applied, deleted, prune, base)
    found = impacts(result, runtime_facts(conn), _routes_after(desired)) + _expired(deleted, now, retention_days)
    return Review(result, found)


def review(manifests: Manifests, store: Store, prune: bool = False, retention_days: float = 30) -> Review:
    with store.engine.connect() as conn:
        return review_in(conn, desired_state(manifests), prune, store.now(), retention_days)


def review_against(manifests: Manifests, applied: Mapping, revision: str, store: Store | None,
                   prune: bool = False) -> Review:
    result = plan(desired_state(manifests), applied, {}, prune, None)
    if store is None:
        return Review(result, impacts(result, None), NO_STORE_NOTE, revision)
    with store.engine.connect() as conn:
        facts = runtime_facts(conn)
    return Review(result, impacts(result, facts, _routes_after(desired_state(manifests))), None, revision)


def reconcile(manifests: Manifests, store: Store, prune: bool = False, lock_timeout: float = 30,
              retention_days: float = 30, show: Callable[[Review], None] = lambda r: None) -> int | None:
    """Lock, plan, show, apply, purge expired soft deletes: one transaction."""
    desired = desired_state(manifests)
    with store.engine.begin() as conn:
        applied_config.lock(conn, lock_timeout)
        found = review_in(conn, desired, prune, store.now(), retention_days)
        show(found)
        generation = apply(found.plan, conn, store.now(), applied_config.applied_resources(conn))
        purged = applied_config.purge_deleted(conn, store.now() - retention_days * DAY)
        if purged and generation is None:
            generation = applied_config.write_resources(conn, [], [], store.now())
        return generation


def apply_saved(saved: Plan, store: Store, lock_timeout: float = 30) -> int | None:
    with store.engine.begin() as conn:
        current = applied_config.lock(conn, lock_timeout)
        if current != saved.base_generation:
            raise StalePlan(f"the store changed since this plan was made (plan: generation "
                            f"{saved.base_generation}, store: generation {current}); make a new plan")
        return apply(saved, conn, store.now(), applied_config.applied_resources(conn))


__all__ = ["Action", "ApplyError", "Plan", "Review", "StalePlan", "apply", "apply_saved", "check_references",
           "desired_state", "plan", "reconcile", "render_json", "render_text", "review", "review_against"]
