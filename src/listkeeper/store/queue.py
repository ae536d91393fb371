"""Spooled messages and the delivery queue: the queries the engine's runners share."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from .tables import deliveries, messages


@dataclass(frozen=True)
class PostRecord:
    """One list's copy of an accepted message, with who gets it."""

    list_name: str
    state: str  # queued | held
    reason: str
    data: bytes
    return_path: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class InboundRecord:
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    generation: int
    posts: tuple[PostRecord, ...]


@dataclass(frozen=True)
class Due:
    delivery_id: int
    message_id: int
    recipient: str
    return_path: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    state: str  # delivered | deferred | failed
    transport: str
    error: str | None = None
    next_attempt_at: float | None = None


def spool(conn: Connection, records: Iterable[InboundRecord], now: float) -> list[int]:
    """Store accepted messages with their posts and deliveries; the caller commits once for all."""
    ids = []
    for record in records:
        inbound_id = conn.execute(insert(messages).values(
            kind="inbound", state="accepted", mail_from=record.mail_from,
            recipients=json.dumps(list(record.recipients)), generation=record.generation,
            size=len(record.data), data=record.data, created_at=now,
        )).inserted_primary_key[0]
        ids.append(inbound_id)
        for post in record.posts:
            post_id = conn.execute(insert(messages).values(
                kind="post", state=post.state, parent_id=inbound_id, list_name=post.list_name,
                mail_from=post.return_path, recipients=json.dumps(list(post.recipients)),
                reason=post.reason, generation=record.generation, size=len(post.data),
                data=post.data, created_at=now,
            )).inserted_primary_key[0]
            if post.state == "queued" and post.recipients:
                conn.execute(insert(deliveries), [
                    dict(message_id=post_id, recipient=rcpt, return_path=post.return_path,
                         state="queued", attempts=0, next_attempt_at=now, created_at=now, updated_at=now)
                    for rcpt in post.recipients
                ])
    return ids


def release_expired(conn: Connection, now: float) -> int:
    """Deliveries whose lease ran out (a crashed runner) become due again."""
    return conn.execute(update(deliveries).where(
        deliveries.c.state == "sending", deliveries.c.lease_until < now,
    ).values(state="deferred", lease_until=None, updated_at=now)).rowcount


def claim_due(conn: Connection, now: float, limit: int, lease: float) -> list[Due]:
    rows = conn.execute(
        select(deliveries.c.id, deliveries.c.message_id, deliveries.c.recipient,
               deliveries.c.return_path, deliveries.c.attempts, deliveries.c.created_at)
        .where(deliveries.c.state.in_(("queued", "deferred")), deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return []
    conn.execute(update(deliveries).where(deliveries.c.id.in_([r.id for r in rows]))
                 .values(state="sending", lease_until=now + lease, updated_at=now))
    return [Due(r.id, r.message_id, r.recipient, r.return_path, r.attempts, r.created_at) for r in rows]


def next_due_at(conn: Connection) -> float | None:
    return conn.execute(select(func.min(deliveries.c.next_attempt_at))
                        .where(deliveries.c.state.in_(("queued", "deferred")))).scalar()


def message_data(conn: Connection, message_ids: Iterable[int]) -> dict[int, bytes]:
    ids = list(set(message_ids))
    if not ids:
        return {}
    rows = conn.execute(select(messages.c.id, messages.c.data).where(messages.c.id.in_(ids)))
    return {row.id: row.data for row in rows}


def record_outcomes(conn: Connection, outcomes: Iterable[Outcome], now: float) -> None:
    for o in outcomes:
        values = dict(state=o.state, transport=o.transport, last_error=o.error, lease_until=None,
                      updated_at=now, attempts=deliveries.c.attempts + 1)
        if o.next_attempt_at is not None:
            values["next_attempt_at"] = o.next_attempt_at
        conn.execute(update(deliveries).where(deliveries.c.id == o.delivery_id).values(**values))


def queue_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(deliveries.c.state, func.count()).group_by(deliveries.c.state))
    return {state: count for state, count in rows}


def held_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(messages.c.list_name, func.count())
                        .where(messages.c.kind == "post", messages.c.state == "held")
                        .group_by(messages.c.list_name))
    return {name: count for name, count in rows}
