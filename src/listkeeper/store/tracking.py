"""Where one post's deliveries stand: what `listkeeper queue wait` follows.

A post is named by a message id: an accepted inbound message (its copies to each list count) or one
list's copy of it."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from .tables import deliveries, messages


def _copies(post_id: int):
    return select(messages.c.id).where((messages.c.id == post_id) | (messages.c.parent_id == post_id))


STOPPED = ("held", "rejected", "discarded", "expired")  # a list copy moderation holds or held back


def newest_post(conn: Connection) -> int | None:
    """The newest post to a list that has deliveries or that moderation holds or stopped (a held copy is
    stored after the moderators' notice, so that notice is never taken for it; a notice about a copy,
    such as a rejection, is not a post); if there is none, the newest message the engine sent of its own
    (an event's template mail, a report)."""
    has_deliveries = select(deliveries.c.id).where(deliveries.c.message_id == messages.c.id).exists()
    stopped = messages.c.state.in_(STOPPED) & messages.c.parent_id.is_not(None)
    parent = messages.alias("parent")
    about_a_copy = select(parent.c.id).where(parent.c.id == messages.c.parent_id, parent.c.kind == "post").exists()
    return conn.execute(select(messages.c.id).where(messages.c.kind == "post", has_deliveries | stopped, ~about_a_copy)
                        .order_by(messages.c.parent_id.is_(None), messages.c.id.desc()).limit(1)).scalar()


def moderated(conn: Connection, post_id: int) -> dict[str, str]:
    """The lists whose copy of the post moderation holds or stopped, by name: 'held', 'rejected',
    'discarded' or 'expired'."""
    return dict(conn.execute(select(messages.c.list_name, messages.c.state).where(
        messages.c.id.in_(_copies(post_id)), messages.c.kind == "post", messages.c.state.in_(STOPPED))
        .order_by(messages.c.list_name)).all())


def delivering_lists(conn: Connection, post_id: int) -> set[str]:
    """The lists whose copies of the post have deliveries: for a list whose copy moderation holds or
    stopped, that is only the notices (to its moderators, to the sender)."""
    has_deliveries = select(deliveries.c.id).where(deliveries.c.message_id == messages.c.id).exists()
    return set(conn.execute(select(messages.c.list_name).where(messages.c.id.in_(_copies(post_id)), has_deliveries)
                            .distinct()).scalars())


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
