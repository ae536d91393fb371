"""What reports read (failed deliveries, subscription changes, refusals, event fires, the queue), and
each report's last run, from which its next period starts."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .tables import deliveries, event_fires, messages, refusals, report_runs, subscription_changes

PENDING = ("queued", "deferred", "sending")


def last_run(conn: Connection, name: str) -> float | None:
    return conn.execute(select(report_runs.c.last_run_at).where(report_runs.c.name == name)).scalar()


def last_run_row(conn: Connection, name: str) -> dict | None:
    row = conn.execute(select(report_runs).where(report_runs.c.name == name)).first()
    return dict(row._mapping) if row else None


def claim_run(conn: Connection, name: str, previous: float | None, at: float, trigger: str) -> bool:
    """Record a run at `at` if the last run is still `previous` (None: there was none). False: another
    run was recorded since it was read (PostgreSQL waits for its commit), and its period is not ours to
    send. The rows are counted in afterwards (count_rows)."""
    values = dict(last_run_at=at, rows=0, trigger=trigger)
    if previous is None:
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        claim = dialect.insert(report_runs).values(name=name, **values).on_conflict_do_nothing(
            index_elements=["name"])
    else:
        claim = update(report_runs).where(report_runs.c.name == name,
                                          report_runs.c.last_run_at == previous).values(**values)
    return conn.execute(claim).rowcount == 1


def count_rows(conn: Connection, name: str, rows: int) -> None:
    conn.execute(update(report_runs).where(report_runs.c.name == name).values(rows=rows))


def delivery_failures(conn: Connection, since: float, until: float, lists: Sequence[str] = ()) -> list[dict]:
    """Deliveries that failed for good, or were deferred, within the period, oldest first."""
    query = (select(deliveries.c.updated_at.label("at"), messages.c.list_name, deliveries.c.recipient,
                    deliveries.c.state, deliveries.c.attempts, deliveries.c.transport, deliveries.c.last_error)
             .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
             .where(deliveries.c.state.in_(("failed", "deferred")), deliveries.c.updated_at >= since,
                    deliveries.c.updated_at < until)
             .order_by(deliveries.c.updated_at, deliveries.c.id))
    if lists:
        query = query.where(messages.c.list_name.in_(list(lists)))
    return [dict(r._mapping) for r in conn.execute(query)]


def subscription_changes_between(conn: Connection, since: float, until: float,
                                 lists: Sequence[str] = ()) -> list[dict]:
    query = (select(subscription_changes)
             .where(subscription_changes.c.at >= since, subscription_changes.c.at < until)
             .order_by(subscription_changes.c.list_name, subscription_changes.c.at, subscription_changes.c.id))
    if lists:
        query = query.where(subscription_changes.c.list_name.in_(list(lists)))
    return [dict(r._mapping) for r in conn.execute(query)]


def refusals_between(conn: Connection, since: float, until: float) -> list[dict]:
    rows = conn.execute(select(refusals).where(refusals.c.at >= since, refusals.c.at < until)
                        .order_by(refusals.c.at, refusals.c.id))
    return [{**dict(r._mapping), "recipients": json.loads(r.recipients)} for r in rows]


def event_activity(conn: Connection, since: float, until: float, lists: Sequence[str] = ()) -> list[dict]:
    """Per list and event: fires, distinct subscribers, first and last fire in the period."""
    query = (select(event_fires.c.list_name, event_fires.c.event, func.count().label("fires"),
                    func.count(func.distinct(event_fires.c.address)).label("subscribers"),
                    func.min(event_fires.c.at).label("first"), func.max(event_fires.c.at).label("last"))
             .where(event_fires.c.at >= since, event_fires.c.at < until)
             .group_by(event_fires.c.list_name, event_fires.c.event)
             .order_by(event_fires.c.list_name, event_fires.c.event))
    if lists:
        query = query.where(event_fires.c.list_name.in_(list(lists)))
    return [dict(r._mapping) for r in conn.execute(query)]


def queue_state(conn: Connection) -> list[dict]:
    """Deliveries not yet done, by state and destination, with the oldest and the next attempt."""
    query = (select(deliveries.c.state, deliveries.c.transport, func.count().label("deliveries"),
                    func.min(deliveries.c.created_at).label("oldest"),
                    func.min(deliveries.c.next_attempt_at).label("next_attempt"))
             .where(deliveries.c.state.in_(PENDING))
             .group_by(deliveries.c.state, deliveries.c.transport)
             .order_by(deliveries.c.state, deliveries.c.transport))
    return [dict(r._mapping) for r in conn.execute(query)]
