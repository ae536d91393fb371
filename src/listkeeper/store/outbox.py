"""The notification outbox: system events committed by a process with no engine attached, waiting for
the leading engine to read them (and delete them in the same transaction)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from .tables import notify_outbox


KEEP = 7 * 86400  # an event no engine drained within a week is stale: dropped by the next write
PRUNE = 100  # at most this many, from the oldest, per write: the cost of a write stays flat


def add(conn: Connection, event_id: str, type_: str, attributes: Mapping[str, Any], at: float) -> None:
    """The event, waiting for the engine; and, so that commands run without any engine (a `tick` from
    cron) cannot grow the table for ever, the oldest events past KEEP go."""
    oldest = select(notify_outbox.c.id).order_by(notify_outbox.c.id).limit(PRUNE).scalar_subquery()
    conn.execute(delete(notify_outbox).where(notify_outbox.c.id.in_(oldest), notify_outbox.c.at < at - KEEP))
    conn.execute(insert(notify_outbox).values(event_id=event_id, type=type_, at=at,
                                              attributes=json.dumps(dict(attributes), sort_keys=True)))


def take(conn: Connection, limit: int) -> list[dict]:
    """The oldest `limit` events, deleted; they are gone only if `conn`'s transaction commits. On
    PostgreSQL rows another transaction is taking are skipped, so no two drains take the same event."""
    rows = conn.execute(select(notify_outbox).order_by(notify_outbox.c.id).limit(limit)
                        .with_for_update(skip_locked=True)).all()
    if rows:
        conn.execute(delete(notify_outbox).where(notify_outbox.c.id.in_([r.id for r in rows])))
    return [{**r._mapping, "attributes": json.loads(r.attributes)} for r in rows]


def waiting(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(notify_outbox)).scalar_one()


def backlog(conn: Connection) -> tuple[int, float | None]:
    """How many events wait, and when the oldest of them happened (None: none waits)."""
    count, oldest = conn.execute(select(func.count(), func.min(notify_outbox.c.at))).one()
    return count, oldest
