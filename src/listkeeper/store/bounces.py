"""Bounces as runtime data: the bounce posts waiting to be read, every bounce recorded per subscriber,
and each subscriber's score (subscribers.bounce_score / bounce_last_at)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from .tables import bounces, messages, subscribers

PENDING = "bounce"  # messages.state of a bounce post not read yet
UNATTRIBUTED = "not counted: unattributed: "  # in a bounce's detail: not shown to answer our mail (forged?)
DONE = "bounce-done"  # read: its failures are recorded (or it held none)
UNREADABLE = "bounce-error"  # reading it failed; kept, and logged, for a person to look at


@dataclass(frozen=True)
class BouncePost:
    id: int
    list_name: str
    to: str  # the address it was sent to: LIST-bounces@ or its VERP form
    mail_from: str  # the envelope sender: empty for a true bounce
    data: bytes
    at: float  # when it arrived


@dataclass(frozen=True)
class Standing:
    """A subscriber's bounce record as the score rules need it."""

    score: float
    last_at: float | None  # the latest bounce, counted or not
    last_counted_at: float | None


@dataclass(frozen=True)
class Entry:
    address: str
    state: str
    score: float
    last_at: float | None
    hard: int
    soft: int


def pending(conn: Connection, limit: int) -> list[BouncePost]:
    inbound = aliased(messages)
    rows = conn.execute(
        select(messages.c.id, messages.c.list_name, messages.c.recipients, messages.c.data, messages.c.created_at,
               inbound.c.mail_from)
        .select_from(messages.outerjoin(inbound, inbound.c.id == messages.c.parent_id))
        .where(messages.c.kind == "post", messages.c.state == PENDING)
        .order_by(messages.c.id).limit(limit))
    found = []
    for row in rows:
        to = json.loads(row.recipients or "[]")
        found.append(BouncePost(row.id, row.list_name or "", to[0] if to else "", row.mail_from or "", row.data,
                                row.created_at))
    return found


def mark(conn: Connection, post_id: int, state: str) -> None:
    conn.execute(update(messages).where(messages.c.id == post_id).values(state=state))


def standing(conn: Connection, list_name: str, address: str) -> Standing | None:
    row = conn.execute(select(subscribers.c.bounce_score, subscribers.c.bounce_last_at).where(
        subscribers.c.list_name == list_name, subscribers.c.address == address)).first()
    if row is None:
        return None
    counted = conn.execute(select(func.max(bounces.c.at)).where(
        bounces.c.list_name == list_name, bounces.c.address == address, bounces.c.counted == 1)).scalar()
    return Standing(row.bounce_score or 0.0, row.bounce_last_at, counted)


def record(conn: Connection, list_name: str, address: str, kind: str, counted: bool, message_id: int | None,
           detail: str, at: float) -> None:
    conn.execute(insert(bounces).values(list_name=list_name, address=address, kind=kind, counted=int(counted),
                                        message_id=message_id, detail=detail, at=at))


def set_score(conn: Connection, list_name: str, address: str, score: float, at: float) -> None:
    conn.execute(update(subscribers).where(subscribers.c.list_name == list_name, subscribers.c.address == address)
                 .values(bounce_score=score, bounce_last_at=at))


def forget_stale(conn: Connection, list_name: str, before: float) -> int:
    """Scores whose last bounce is at or before `before` go back to zero. A disabled member's score is
    kept: it says why their delivery stopped (enabling them clears it)."""
    return conn.execute(update(subscribers).where(
        subscribers.c.list_name == list_name, subscribers.c.bounce_score > 0, subscribers.c.state == "active",
        subscribers.c.bounce_last_at <= before).values(bounce_score=0)).rowcount


def entries(conn: Connection, list_name: str, everyone: bool = False) -> list[Entry]:
    """Subscribers with a bounce record (or, with everyone, all), with their hard and soft counts: of the
    bounces shown to answer our mail (an unattributed one, maybe forged, is in the history only)."""
    counts = (select(bounces.c.address, func.sum(case((bounces.c.kind == "hard", 1), else_=0)).label("hard"),
                     func.count().label("total"))
              .where(bounces.c.list_name == list_name,
                     (bounces.c.counted == 1) | ~func.coalesce(bounces.c.detail, "").contains(UNATTRIBUTED))
              .group_by(bounces.c.address).subquery())
    query = (select(subscribers.c.address, subscribers.c.state, subscribers.c.bounce_score,
                    subscribers.c.bounce_last_at, func.coalesce(counts.c.hard, 0), func.coalesce(counts.c.total, 0))
             .select_from(subscribers.outerjoin(counts, counts.c.address == subscribers.c.address))
             .where(subscribers.c.list_name == list_name))
    if not everyone:
        query = query.where(subscribers.c.bounce_last_at.is_not(None))
    rows = conn.execute(query.order_by(subscribers.c.bounce_score.desc(), subscribers.c.address))
    return [Entry(r[0], r[1], r[2] or 0.0, r[3], int(r[4]), int(r[5]) - int(r[4])) for r in rows]


def history(conn: Connection, list_name: str, address: str, limit: int = 20) -> list[dict]:
    rows = conn.execute(select(bounces).where(bounces.c.list_name == list_name, bounces.c.address == address)
                        .order_by(bounces.c.at.desc(), bounces.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]
