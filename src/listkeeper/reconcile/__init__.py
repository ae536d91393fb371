"""Reconcile: desired state from manifests, diffed against the store's applied state, then applied.

`review` reads; `reconcile` locks, reviews and applies in one transaction, so the plan shown is
exactly what is written; `apply_saved` applies a saved plan unless the store moved on since."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from listkeeper.manifests import Manifests
from listkeeper.manifests.directory import MemberDirectorySpec, Members
from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store import config_history
from listkeeper.store import directory as member_directory
from listkeeper.store import events as store_events
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
                        store_queue.pending_domains(conn), store_events.counters_by_event(conn))


def _routes_after(desired: Mapping[tuple[str, str], DesiredResource]):
    table = next((d for (kind, _), d in desired.items() if kind == "RoutingTable"), None)
    return table.spec if table else None


def _expired(deleted, now: float, retention_days: float) -> tuple[Impact, ...]:
    return tuple(Impact(kind, name, f"deleted {(now - d.deleted_at) / DAY:.0f} days ago; the retention period "
                        "is over: its runtime data will be purged")
                 for (kind, name), d in sorted(deleted.items())
                 if d.deleted_at is not None and d.deleted_at < now - retention_days * DAY)


def _dynamic(spec, directories):
    if not spec or not spec.get("members"):
        return None
    members = Members.model_validate(spec["members"])
    directory = directories.get(members.directory)
    if directory is None:
        return None
    return MemberDirectorySpec.model_validate(directory), tuple(members.query)


def _unreadable(dynamic, exc: Exception) -> str:
    """One line saying which directory could not be read and why; a database URL without its password."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.engine import make_url
    reason = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())
    source = dynamic[0].source if dynamic else None
    where = ""
    if source is not None and getattr(source, "sql", None) is not None:
        try:
            where = f" ({make_url(source.sql.url).render_as_string(hide_password=True)})"
        except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is named by the error itself
            where = ""
    elif source is not None and getattr(source, "csv", None) is not None:
        where = f" ({source.csv.path})"
    return f"cannot read the member directory{where}: {reason}"


def selection_changes(result: Plan, desired, applied) -> dict:
    """Dynamic lists whose query or directory changes: who the change selects, counted in the directory."""
    before_dirs = {name: a.spec for (kind, name), a in applied.items() if kind == "MemberDirectory"}
    after_dirs = {name: d.spec for (kind, name), d in desired.items() if kind == "MemberDirectory"}
    out = {}
    for change in result.changes:
        if change.kind != "MailingList":
            continue
        old, new = _dynamic(change.before, before_dirs), _dynamic(change.after, after_dirs)
        if (old is None and new is None) or old == new:
            continue
        try:
            out[change.name] = member_directory.change(old, new)
        except Exception as exc:  # noqa: BLE001 - an unreadable directory is reported, not fatal
            out[change.name] = _unreadable(new or old, exc)
    return out


def review_in(conn: Connection, desired, prune: bool, now: float, retention_days: float,
              applied: Mapping | None = None, assess: bool = True) -> Review:
    """The plan, and (`assess`) what it does to runtime data: counted in the store and the directories."""
    base = applied_config.generation(conn)
    applied = applied_config.applied_resources(conn) if applied is None else applied
    deleted = applied_config.deleted_resources(conn)
    result = plan(desired, applied, deleted, prune, base)
    if not assess:
        return Review(result, ())
    found = impacts(result, runtime_facts(conn), _routes_after(desired), selection_changes(result, desired, applied))
    return Review(result, found + _expired(deleted, now, retention_days))


def review(manifests: Manifests, store: Store, prune: bool = False, retention_days: float = 30) -> Review:
    with store.engine.connect() as conn:
        return review_in(conn, desired_state(manifests), prune, store.now(), retention_days)


def review_against(manifests: Manifests, applied: Mapping, revision: str, store: Store | None,
                   prune: bool = False) -> Review:
    desired = desired_state(manifests)
    result = plan(desired, applied, {}, prune, None)
    selections = selection_changes(result, desired, applied)
    if store is None:
        return Review(result, impacts(result, None, None, selections), NO_STORE_NOTE, revision)
    with store.engine.connect() as conn:
        facts = runtime_facts(conn)
    return Review(result, impacts(result, facts, _routes_after(desired), selections), None, revision)


def reconcile(manifests: Manifests, store: Store, prune: bool = False, lock_timeout: float = 30,
              retention_days: float = 30, show: Callable[[Review], None] = lambda r: None,
              origin: config_history.Origin = config_history.Origin(), assess: bool = True) -> int | None:
    """Lock, plan, show, apply, purge expired soft deletes: one transaction (with its history entry).
    `assess` False: the review shown has no runtime impacts (an engine's reload shows no plan)."""
    desired = desired_state(manifests)
    with store.engine.begin() as conn:
        applied_config.lock(conn, lock_timeout)
        applied = applied_config.applied_resources(conn, store.applied)  # only changed rows are decoded
        found = review_in(conn, desired, prune, store.now(), retention_days, applied, assess)
        show(found)
        generation = apply(found.plan, conn, store.now(), applied)
        purged = applied_config.purge_deleted(conn, store.now() - retention_days * DAY)
        if purged and generation is None:
            generation = applied_config.write_resources(conn, [], [], store.now())
        if generation is not None:
            _record_applied(conn, found.plan, generation, origin, store.now(), purged)
        return generation


def _record_applied(conn: Connection, applied: Plan, generation: int, origin: config_history.Origin, now: float,
                    purged: list[str] = ()) -> None:
    done = [c for c in applied.changes if c.changes_something]
    files = sorted({c.source.rsplit(":", 2)[0] for c in done if c.source and c.action is not Action.delete})
    changes = [f"{c.action.value} {c.kind}/{c.name}" for c in done] + [f"purge MailingList/{n}" for n in purged]
    config_history.record(conn, config_history.ConfigChange(now, "applied", generation, origin, tuple(files),
                                                            tuple(changes)))


def apply_saved(saved: Plan, store: Store, lock_timeout: float = 30) -> int | None:
    with store.engine.begin() as conn:
        current = applied_config.lock(conn, lock_timeout)
        if current != saved.base_generation:
            raise StalePlan(f"the store changed since this plan was made (plan: generation "
                            f"{saved.base_generation}, store: generation {current}); make a new plan")
        generation = apply(saved, conn, store.now(), applied_config.applied_resources(conn))
        if generation is not None:
            _record_applied(conn, saved, generation, config_history.Origin(trigger="plan"), store.now())
        return generation


__all__ = ["Action", "ApplyError", "Plan", "Review", "StalePlan", "apply", "apply_saved", "check_references",
           "desired_state", "plan", "reconcile", "render_json", "render_text", "review", "review_against"]
