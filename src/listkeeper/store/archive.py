"""Posts waiting to be written to their list's archive, and each archive's progress.

Accepted posts are added to `archive_pending` when they are spooled (or approved by a moderator); the
archive runner removes them in the same transaction that records them written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from .tables import archive_pending, archives, messages


@dataclass(frozen=True)
class Post:
    message_id: int
    created_at: float
    mail_from: str
    data: bytes


@dataclass(frozen=True)
class Progress:
    archived: int
    mbox_size: int | None


def pending_by_list(conn: Connection, limit: int) -> dict[str, list[int]]:
    """Up to `limit` pending post ids per list, oldest first."""
    found: dict[str, list[int]] = {}
    for name in conn.execute(select(archive_pending.c.list_name).distinct()).scalars():
        found[name] = list(conn.execute(select(archive_pending.c.message_id)
                                        .where(archive_pending.c.list_name == name)
                                        .order_by(archive_pending.c.message_id).limit(limit)).scalars())
    return found


def pending_count(conn: Connection, list_name: str) -> int:
    return conn.execute(select(func.count()).where(archive_pending.c.list_name == list_name)).scalar_one()


def posts(conn: Connection, message_ids: list[int]) -> Iterator[Post]:
    """One post at a time, so a batch of large posts is never in memory at once."""
    for message_id in message_ids:
        row = conn.execute(select(messages.c.id, messages.c.created_at, messages.c.mail_from, messages.c.data)
                           .where(messages.c.id == message_id)).first()
        if row is not None:
            yield Post(row.id, row.created_at, row.mail_from, row.data)


def progress(conn: Connection, list_name: str) -> Progress | None:
    row = conn.execute(select(archives.c.archived, archives.c.mbox_size)
                       .where(archives.c.list_name == list_name)).first()
    return Progress(row.archived, row.mbox_size) if row else None


def written(conn: Connection, list_name: str, message_ids: list[int], count: int, mbox_size: int | None,
            now: float) -> None:
    """The posts are in the archive (written and synced; `count` of them new): take them off the pending list."""
    conn.execute(delete(archive_pending).where(archive_pending.c.list_name == list_name,
                                               archive_pending.c.message_id.in_(message_ids)))
    if conn.execute(update(archives).where(archives.c.list_name == list_name).values(
            archived=archives.c.archived + count, mbox_size=mbox_size, updated_at=now)).rowcount == 0:
        conn.execute(insert(archives).values(list_name=list_name, archived=count, mbox_size=mbox_size,
                                             updated_at=now))


def skip(conn: Connection, list_name: str) -> int:
    """A list that keeps no archive: its pending posts are dropped from the pending list."""
    return conn.execute(delete(archive_pending).where(archive_pending.c.list_name == list_name)).rowcount
