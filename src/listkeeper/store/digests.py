"""Posts waiting for a list's digest, the digests sent (their numbering), and who receives digests.

Accepted posts are added to `digest_pending` when they are spooled (or approved by a moderator); the
digest runner takes them out when it sends them, or when nobody receives the list's digest."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from sqlalchemy import delete, exists, func, insert, select, text
from sqlalchemy.engine import Connection

from .tables import deliveries, digest_pending, digests, messages, subscribers

LOOKUP_CHUNK = 500  # addresses per IN (...) lookup: far below every driver's parameter limit
SENDING_LOCK = 0x6C6B_6467  # 'lkdg': with the list's name, a PostgreSQL advisory lock held while it is sent


@dataclass(frozen=True)
class Pending:
    list_name: str
    posts: int
    size: int
    oldest: float  # when the oldest pending post was accepted


@dataclass(frozen=True)
class Issue:
    list_name: str
    volume: int
    issue: int
    period: str
    posts: int
    size: int
    trigger: str
    sent_at: float


def pending_by_list(conn: Connection, only: str | None = None) -> dict[str, Pending]:
    query = select(digest_pending.c.list_name, func.count(), func.sum(digest_pending.c.size),
                   func.min(digest_pending.c.added_at)).group_by(digest_pending.c.list_name)
    if only is not None:
        query = query.where(digest_pending.c.list_name == only)
    rows = conn.execute(query)
    return {name: Pending(name, count, size or 0, oldest) for name, count, size, oldest in rows}


def pending_posts(conn: Connection, list_name: str) -> list[tuple[int, int]]:
    """(message id, size) of the list's pending posts, oldest first."""
    rows = conn.execute(select(digest_pending.c.message_id, digest_pending.c.size)
                        .where(digest_pending.c.list_name == list_name).order_by(digest_pending.c.message_id))
    return [(message_id, size) for message_id, size in rows]


def post_data(conn: Connection, message_ids: list[int]) -> list[bytes]:
    rows = dict(conn.execute(select(messages.c.id, messages.c.data).where(messages.c.id.in_(message_ids))).all())
    return [rows[i] for i in message_ids if i in rows]


def clear(conn: Connection, list_name: str) -> int:
    return conn.execute(delete(digest_pending).where(digest_pending.c.list_name == list_name)).rowcount


def lock_sending(conn: Connection, list_name: str) -> None:
    """On PostgreSQL, one transaction at a time sends a list's digests (the housekeeping leader, `digest
    send` run by hand): the next one waits for its commit and then reads the posts still pending and
    the newest issue. On SQLite Store.writing() holds the write lock already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(:name))"),
                     {"key": SENDING_LOCK, "name": list_name})


def take(conn: Connection, list_name: str, message_ids: Iterable[int]) -> set[int]:
    """Remove the posts from the pending list; returns those this transaction removed. A post another
    sender removed meanwhile is not among them (PostgreSQL waits for that sender's commit): whatever the
    isolation, each pending post is taken into one digest only."""
    taken: set[int] = set()
    message_ids = iter(message_ids)
    while chunk := list(islice(message_ids, LOOKUP_CHUNK)):
        taken.update(conn.execute(delete(digest_pending).where(
            digest_pending.c.list_name == list_name, digest_pending.c.message_id.in_(chunk))
            .returning(digest_pending.c.message_id)).scalars())
    return taken


def has_members(conn: Connection, list_name: str, *, active_only: bool = True) -> bool:
    where = [subscribers.c.list_name == list_name, subscribers.c.receives == "digest"]
    if active_only:
        where.append(subscribers.c.state == "active")
    return conn.execute(select(exists().where(*where))).scalar()


def excluding_members(conn: Connection, list_name: str, addresses: Iterable[str]) -> Iterator[str]:
    """`addresses` without the list's digest members (who get no single posts), streamed: each chunk
    of addresses is looked up in the store, so a large selection is never held whole."""
    if not has_members(conn, list_name, active_only=False):
        yield from addresses
        return
    addresses = iter(addresses)
    while chunk := list(islice(addresses, LOOKUP_CHUNK)):
        found = set(conn.execute(select(subscribers.c.address).where(
            subscribers.c.list_name == list_name, subscribers.c.receives == "digest",
            subscribers.c.address.in_(chunk))).scalars())
        yield from (a for a in chunk if a not in found)


def last_issue(conn: Connection, list_name: str) -> Issue | None:
    row = conn.execute(select(digests).where(digests.c.list_name == list_name)
                       .order_by(digests.c.sent_at.desc(), digests.c.volume.desc(), digests.c.issue.desc())
                       .limit(1)).first()
    return Issue(**row._mapping) if row else None


def record(conn: Connection, issue: Issue) -> None:
    conn.execute(insert(digests).values(**issue.__dict__))


def recipient_count(conn: Connection, message_id: int) -> int:
    return conn.execute(select(func.count()).where(deliveries.c.message_id == message_id)).scalar_one()
