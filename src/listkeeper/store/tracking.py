"""Where one post's deliveries stand: what `listkeeper queue wait` follows.

A post is named by a message id: an accepted inbound message (its copies to each list count) or one
list's copy of it."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from .tables import deliveries, messages


def _copies(post_id: int):
    return select(messages.c.id).where((messages.c.id == post_id) | (messages.c.parent_id == post_id))


def newest_post(conn: Connection) -> int | None:
    """The newest post to a list that has deliveries; if there is none, the newest message the engine
    sent of its own (an event's template mail, a report)."""
    has_deliveries = select(deliveries.c.id).where(deliveries.c.message_id == messages.c.id).exists()
    return conn.execute(select(messages.c.id).where(messages.c.kind == "post", has_deliveries)
                        .order_by(messages.c.parent_id.is_(None), messages.c.id.desc()).limit(1)).scalar()


def exists(conn: Connection, post_id: int) -> bool:
    return conn.execute(select(messages.c.id).where(messages.c.id == post_id)).first() is not None


def states(conn: Connection, post_id: int) -> dict[str, int]:
    """The post's deliveries by state."""
    rows = conn.execute(select(deliveries.c.state, func.count()).where(deliveries.c.message_id.in_(_copies(post_id)))
                        .group_by(deliveries.c.state))
    return {state: count for state, count in rows}


def failures(conn: Connection, post_id: int, limit: int) -> list[tuple[str, str]]:
    """(recipient, last error) of the post's failed deliveries, by recipient."""
    rows = conn.execute(select(deliveries.c.recipient, deliveries.c.last_error)
                        .where(deliveries.c.message_id.in_(_copies(post_id)), deliveries.c.state == "failed")
                        .order_by(deliveries.c.recipient).limit(limit))
    return [(recipient, error or "-") for recipient, error in rows]
