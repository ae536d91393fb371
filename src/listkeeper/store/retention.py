"""What the store forgets once it is old: finished deliveries, then the messages nothing needs any more.

Each call removes a bounded batch, oldest id first, so a round never holds the write lock long; the next
round takes the rest. Nothing queued, deferred, sending, held or pending (a digest, an archive, a bounce
not read yet) is ever removed: a message goes only when no delivery, hold, pending entry or kept message
refers to it."""

from __future__ import annotations

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.engine import Connection

from .tables import archive_pending, bounces, deliveries, digest_pending, holds, messages

FINAL = ("delivered", "failed", "suppressed")  # delivery/lifecycle.py: no transition leads out of these
KEPT_STATES = ("held", "bounce", "bounce-error")  # undecided; a bounce not read yet; one kept for a person
DELIVERY_BATCH = 10_000
MESSAGE_BATCH = 1_000  # messages carry their bodies: fewer a round
CHUNK = 500  # ids per IN (...): below every SQLite's limit on parameters
CHAINS = 3  # passes per round: a post's going frees its inbound parent, a notice's its post


def _chunks(ids: list[int]):
    return (ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK))


def forget_deliveries(conn: Connection, before: float, limit: int = DELIVERY_BATCH) -> int:
    """Deliveries finished before `before`, up to `limit`, those that fell due first first. The newest
    delivery is always kept: SQLite numbers a new row after the highest id left, and an id once logged
    must never name another delivery. (A finished delivery fell due before it finished: the
    next_attempt_at bound is implied, and lets the due index give the batch in order without a sort.)"""
    last = conn.execute(select(func.max(deliveries.c.id))).scalar()
    removed = 0
    for state in FINAL if last is not None else ():
        if removed >= limit:
            break
        old = [deliveries.c.state == state, deliveries.c.next_attempt_at < before, deliveries.c.updated_at < before,
               deliveries.c.id < last]
        ids = list(conn.execute(select(deliveries.c.id).where(*old).order_by(deliveries.c.next_attempt_at)
                                .limit(limit - removed)).scalars())
        # PostgreSQL: checked again as they go (a `queue retry` may have moved one meanwhile). SQLite holds
        # the write lock since the SELECT; checked again, its planner would walk the due index instead
        again = old if conn.dialect.name != "sqlite" else []
        for chunk in _chunks(ids):
            removed += conn.execute(delete(deliveries).where(deliveries.c.id.in_(chunk), *again)).rowcount
    return removed


def _unneeded(conn: Connection, bound: int):
    """A message below `bound` (_bound: older than `before`) that nothing refers to any more. Its own
    created_at is not read: on SQLite that column comes after the body, and reading it reads the whole
    body of every message looked at. On SQLite a reference from a table
    with no index on it is looked up in the referring ids, read once per statement (NOT IN); as a
    correlated NOT EXISTS it would scan that table for every message. PostgreSQL plans NOT EXISTS as an
    anti-join."""
    child = messages.alias("child")
    referring = [(digest_pending.c.message_id, True), (archive_pending.c.message_id, True),
                 (holds.c.message_id, True), (child.c.parent_id, False)]

    def unreferred(column, not_null: bool):
        if conn.dialect.name != "sqlite":
            return ~exists().where(column == messages.c.id)
        return messages.c.id.not_in(select(column) if not_null else select(column).where(column.is_not(None)))

    return and_(
        messages.c.id < bound,
        messages.c.state.not_in(KEPT_STATES),
        ~exists().where(deliveries.c.message_id == messages.c.id),  # indexed
        *(unreferred(column, not_null) for column, not_null in referring),
    )


def forget_decisions(conn: Connection, before: float) -> int:
    """Moderation decisions taken before `before`: a hold's token then answers that no post is held."""
    return conn.execute(delete(holds).where(holds.c.decided_at.is_not(None), holds.c.decided_at < before)).rowcount


def _bound(conn: Connection, before: float) -> int | None:
    """The id every message to forget is below: the first message not older than `before` (ids grow with
    time; the messages after it are never read), else the newest one, kept for the reason forget_deliveries
    keeps the newest delivery. (Where engine nodes' clocks disagree by seconds, a message may count as old
    that much early.)"""
    first_kept = conn.execute(select(messages.c.id).where(messages.c.created_at >= before)
                              .order_by(messages.c.id).limit(1)).scalar()
    return first_kept if first_kept is not None else conn.execute(select(func.max(messages.c.id))).scalar()


def forget_messages(conn: Connection, before: float, limit: int = MESSAGE_BATCH) -> int:
    """Messages older than `before` that nothing needs, up to `limit`, oldest first. A bounce's history
    row keeps its facts; its reference to the message it came in is cleared."""
    bound = _bound(conn, before)
    removed = 0
    for _ in range(CHAINS if bound is not None else 0):
        if removed >= limit:
            break
        ids = list(conn.execute(select(messages.c.id).where(_unneeded(conn, bound))
                                .order_by(messages.c.id).limit(limit - removed)).scalars())
        if not ids:
            break
        for chunk in _chunks(ids):
            # checked again as the rows go: on PostgreSQL something may refer to one since it was chosen
            gone = list(conn.execute(delete(messages).where(messages.c.id.in_(chunk), _unneeded(conn, bound))
                                     .returning(messages.c.id)).scalars())
            if gone:
                conn.execute(update(bounces).where(bounces.c.message_id.in_(gone)).values(message_id=None))
            removed += len(gone)
    return removed
