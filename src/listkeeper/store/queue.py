"""Spooled messages and the delivery queue: the queries the engine's runners share."""

from __future__ import annotations

import json
from itertools import islice
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Float, Text, bindparam, delete, func, insert, literal, select, text, update
from sqlalchemy.engine import Connection

from listkeeper.manifests.addresses import verp

from . import config, events
from .leases import lease_clock, release_all, release_expired, release_own, renew_leases  # noqa: F401 - re-exported
from .tables import archive_pending, deliveries, digest_pending, holds, messages

INSERT_CHUNK = 2000


@dataclass(frozen=True)
class PostRecord:
    """One list's copy of an accepted message, with who gets it."""

    list_name: str
    state: str  # queued | held
    reason: str
    data: bytes
    return_path: str
    # a callable is given the spool's connection and streams who receives it (the store's subscribers,
    # a dynamic list's selection) when the post is written: never a Python list of every member
    recipients: tuple[str, ...] | Callable[[Connection], Iterable[str]]
    verp: bool = False  # each recipient's return path names it (bounce attribution)
    poster: str | None = None  # a subscriber whose accepted post fires the list's 'post' event
    hold: "Hold | None" = None  # a post held for moderation: its token and what the moderators are told
    digest: bool = False  # an accepted list post: also kept for the list's digest members and its archive

    def each_recipient(self, conn: Connection) -> Iterable[str]:
        return self.recipients(conn) if callable(self.recipients) else self.recipients


@dataclass(frozen=True)
class Hold:
    token: str
    sender: str
    subject: str
    expires_at: float


@dataclass(frozen=True)
class InboundRecord:
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    generation: int
    posts: tuple[PostRecord, ...]
    # done in the same transaction (a mail command); may return more posts to spool (its replies)
    then: tuple[Callable[[Connection, float], "Iterable[PostRecord] | None"], ...] = ()


@dataclass(frozen=True)
class Due:
    delivery_id: int
    message_id: int
    recipient: str
    return_path: str
    attempts: int
    created_at: float
    queue_id: int | None = None  # the SMTP-accepted message the copy came from; none for the engine's own mail


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    state: str  # delivered | deferred | failed
    transport: str
    error: str | None = None
    next_attempt_at: float | None = None


def spool(conn: Connection, records: Iterable[InboundRecord], now: float) -> list[int]:
    """Store accepted messages with their posts and deliveries; the caller commits once for all.

    Three executemany statements per batch, whatever its size: group commit stays cheap."""
    return [inbound_id for inbound_id, _ in spool_posts(conn, records, now)]


def spool_posts(conn: Connection, records: Iterable[InboundRecord],
                now: float) -> list[tuple[int, list[tuple[int, PostRecord]]]]:
    """`spool`, saying also each stored message's posts with their ids (what the logs link)."""
    records = list(records)
    if not records:
        return []
    inbound_ids = conn.execute(
        insert(messages).returning(messages.c.id, sort_by_parameter_order=True),
        [dict(kind="inbound", state="accepted", parent_id=None, list_name=None, mail_from=r.mail_from,
              recipients=json.dumps(list(r.recipients)), reason=None, generation=r.generation,
              size=len(r.data), data=r.data, created_at=now) for r in records],
    ).scalars().all()
    # The posts' recipients are read from the store now: they carry the generation in force in this
    # transaction, which a reload may have moved past the accepting session's snapshot.
    in_force = config.generation_in_force(conn)
    rows = [(inbound_id, in_force, p) for inbound_id, r in zip(inbound_ids, records) for p in r.posts]
    stored: dict[int, list[tuple[int, PostRecord]]] = {inbound_id: [] for inbound_id in inbound_ids}
    for (inbound_id, _, post), post_id in zip(rows, insert_posts(conn, rows, now)):
        stored[inbound_id].append((post_id, post))
    for inbound_id, record in zip(inbound_ids, records):
        for action in record.then:
            more = list(action(conn, now) or ())
            if more:
                post_ids = insert_posts(conn, [(inbound_id, in_force, p) for p in more], now)
                stored[inbound_id].extend(zip(post_ids, more))
    return [(inbound_id, stored[inbound_id]) for inbound_id in inbound_ids]


def _delivery_statement(conn: Connection) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return (f"INSERT INTO {deliveries.name} (message_id, recipient, return_path, state, attempts, "
            f"next_attempt_at, created_at, updated_at) VALUES ({', '.join([mark] * 8)})")


def insert_deliveries(conn: Connection, message_id: int, recipients: Iterable[str], return_path: str,
                      verp_each: bool, now: float) -> None:
    rows = ((message_id, rcpt, verp(return_path, rcpt) if verp_each else return_path, "queued", 0, now, now, now)
            for rcpt in recipients)
    statement = _delivery_statement(conn)
    while chunk := list(islice(rows, INSERT_CHUNK)):
        conn.exec_driver_sql(statement, chunk)


def verp_sql(bounce_address: str, recipient):
    """manifests/addresses.py `verp` as an SQL expression, so a fan-out written by INSERT ... SELECT
    gets the very return paths `insert_deliveries` writes."""
    local, _, domain = bounce_address.rpartition("@")
    return (literal(f"{local}+", Text) + func.replace(recipient, "@", "=", type_=Text)
            + literal(f"@{domain}", Text))


def queue_template(conn: Connection, list_name: str, reason: str, data: bytes, bounce_address: str, recipient,
                   generation: int, now: float) -> int:
    """A template mail: stored once (kind 'template', rendered per recipient at delivery) with a
    delivery per row of the `recipient` column, each with its VERP return path: two statements, for
    any number of recipients. Returns the stored message's id."""
    message_id = conn.execute(insert(messages).returning(messages.c.id), dict(
        kind="template", state="queued", parent_id=None, list_name=list_name, mail_from=bounce_address,
        recipients="[]", reason=reason, generation=generation, size=len(data), data=data, created_at=now)).scalar_one()
    rows = select(literal(message_id), recipient, verp_sql(bounce_address, recipient), literal("queued"),
                  literal(0), literal(now), literal(now), literal(now))
    conn.execute(insert(deliveries).from_select(
        ["message_id", "recipient", "return_path", "state", "attempts", "next_attempt_at", "created_at", "updated_at"],
        rows))
    return message_id


def insert_posts(conn: Connection, posts: list[tuple[int | None, int, PostRecord]], now: float) -> list[int]:
    """Posts (each with its parent message and generation), their deliveries, holds and digest entries."""
    if not posts:
        return []
    post_ids = conn.execute(
        insert(messages).returning(messages.c.id, sort_by_parameter_order=True),
        [dict(kind="post", state=p.state, parent_id=parent, list_name=p.list_name, mail_from=p.return_path,
              recipients="[]" if callable(p.recipients) else json.dumps(list(p.recipients)), reason=p.reason,
              generation=generation, size=len(p.data), data=p.data, created_at=now) for parent, generation, p in posts],
    ).scalars().all()
    rows = ((post_id, rcpt, verp(p.return_path, rcpt) if p.verp else p.return_path, "queued", 0, now, now, now)
            for post_id, (_, _, p) in zip(post_ids, posts) if p.state == "queued" for rcpt in p.each_recipient(conn))
    statement = _delivery_statement(conn)
    while chunk := list(islice(rows, INSERT_CHUNK)):  # a big fan-out never holds every row at once
        conn.exec_driver_sql(statement, chunk)  # plain tuples: the hot path of a large fan-out
    events.record_many(conn, "post", ((p.list_name, p.poster) for _, _, p in posts
                                      if p.poster and p.state == "queued"), now)
    held = [dict(token=p.hold.token, message_id=post_id, list_name=p.list_name, sender=p.hold.sender,
                 subject=p.hold.subject, reason=p.reason, created_at=now, expires_at=p.hold.expires_at)
            for post_id, (_, _, p) in zip(post_ids, posts) if p.hold is not None]
    if held:
        conn.execute(insert(holds), held)
    pending = [dict(list_name=p.list_name, message_id=post_id, size=len(p.data), added_at=now)
               for post_id, (_, _, p) in zip(post_ids, posts) if p.digest and p.state == "queued"]
    if pending:
        conn.execute(insert(digest_pending), pending)
        conn.execute(insert(archive_pending), [dict(list_name=r["list_name"], message_id=r["message_id"],
                                                    added_at=now) for r in pending])
    return list(post_ids)


def claim_due(conn: Connection, now: float, limit: int, lease: float, owner: str | None = None) -> list[Due]:
    """Due deliveries, leased to `owner` for `lease` seconds (leases.py `lease_clock`), in the order they
    fell due. On PostgreSQL the rows are locked with SKIP LOCKED: nodes claiming at once each get different
    rows and never wait for each other. (SQLite serialises writers; the clause is left out there, and the
    SELECT runs before the write lock is taken.) So the UPDATE claims only rows still due and returns
    those: a delivery dropped or changed between the two is never claimed. (BEGIN IMMEDIATE would do it
    too, but holds the write lock while the claimed bodies are read: the delivery bench lost some 13%.)"""
    due = [deliveries.c.state.in_(("queued", "deferred")), deliveries.c.next_attempt_at <= now]
    chosen = conn.execute(
        select(deliveries.c.id, _queue_id().label("queue_id")).where(*due)
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not chosen:
        return []
    order = {r.id: (n, r.queue_id) for n, r in enumerate(chosen)}
    rows = conn.execute(
        update(deliveries).where(deliveries.c.id.in_(list(order)), *due)
        .values(state="sending", lease_until=lease_clock(conn, now) + lease, claimed_by=owner, updated_at=now)
        .returning(deliveries.c.id, deliveries.c.message_id, deliveries.c.recipient, deliveries.c.return_path,
                   deliveries.c.attempts, deliveries.c.created_at)
    ).all()
    return [Due(r.id, r.message_id, r.recipient, r.return_path, r.attempts, r.created_at, order[r.id][1])
            for r in sorted(rows, key=lambda r: order[r.id][0])]


def _queue_id():
    """The delivery's post's parent when that is an accepted inbound message. A subquery, not a join: the
    claim's FOR UPDATE then locks the deliveries alone, never their messages."""
    post, parent = messages.alias("post"), messages.alias("parent")
    return (select(parent.c.id).where(post.c.id == deliveries.c.message_id, parent.c.id == post.c.parent_id,
                                      parent.c.kind == "inbound").correlate(deliveries).scalar_subquery())


def next_due_at(conn: Connection) -> float | None:
    return conn.execute(select(func.min(deliveries.c.next_attempt_at))
                        .where(deliveries.c.state.in_(("queued", "deferred")))).scalar()


def message_data(conn: Connection, message_ids: Iterable[int]) -> dict[int, bytes]:
    ids = list(set(message_ids))
    if not ids:
        return {}
    rows = conn.execute(select(messages.c.id, messages.c.data).where(messages.c.id.in_(ids)))
    return {row.id: row.data for row in rows}


_RECORD = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), transport=bindparam("b_transport"), last_error=bindparam("b_error"),
            lease_until=None, updated_at=bindparam("b_now"), attempts=deliveries.c.attempts + 1,
            next_attempt_at=func.coalesce(bindparam("b_next", type_=Float), deliveries.c.next_attempt_at))
)
# a node's outcome counts only while the delivery is still its own: after its lease expired another
# node may have claimed it, and that node's outcome is the one kept
_RECORD_OWNED = _RECORD.where(deliveries.c.claimed_by == bindparam("b_owner"))


def message_heads(conn: Connection, message_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """(list name or '', kind) of each message: how delivery makes its copies."""
    ids = list(set(message_ids))
    rows = conn.execute(select(messages.c.id, messages.c.list_name, messages.c.kind)
                        .where(messages.c.id.in_(ids))) if ids else []
    return {row.id: (row.list_name or "", row.kind) for row in rows}


def list_names(conn: Connection, message_ids: Iterable[int]) -> dict[int, str]:
    ids = list(set(message_ids))
    rows = conn.execute(select(messages.c.id, messages.c.list_name).where(messages.c.id.in_(ids))) if ids else []
    return {row.id: row.list_name or "" for row in rows}


# PostgreSQL: a batch of outcomes as one statement over arrays, not one UPDATE per delivery
_RECORD_ARRAYS = text(f"""
UPDATE {deliveries.name} AS d SET state = o.state, transport = o.transport, last_error = o.error, lease_until = NULL,
    updated_at = :now, attempts = d.attempts + 1, next_attempt_at = coalesce(o.next, d.next_attempt_at)
FROM unnest(CAST(:ids AS integer[]), CAST(:states AS text[]), CAST(:transports AS text[]), CAST(:errors AS text[]),
            CAST(:nexts AS double precision[]), CAST(:owners AS text[])) AS o(id, state, transport, error, next, owner)
WHERE d.id = o.id AND d.claimed_by = o.owner""")
# (the owner is a column of the batch, not a constant: the planner then reads the batch's rows by key,
# whatever its statistics say about claimed_by)


def record_outcomes(conn: Connection, outcomes: Iterable[Outcome], now: float, owner: str | None = None) -> None:
    """Outcomes in one statement; with `owner`, only of deliveries that node still holds."""
    outcomes = list(outcomes)
    if outcomes and owner is not None and conn.dialect.name == "postgresql":
        conn.execute(_RECORD_ARRAYS, dict(
            now=now, ids=[o.delivery_id for o in outcomes], states=[o.state for o in outcomes],
            transports=[o.transport for o in outcomes], errors=[o.error for o in outcomes],
            nexts=[o.next_attempt_at for o in outcomes], owners=[owner] * len(outcomes)))
        return
    params = [dict(b_id=o.delivery_id, b_state=o.state, b_transport=o.transport, b_error=o.error, b_now=now,
                   b_next=o.next_attempt_at) for o in outcomes]
    if params and owner is not None:
        conn.execute(_RECORD_OWNED, [dict(p, b_owner=owner) for p in params])
    elif params:
        conn.execute(_RECORD, params)


def queue_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(deliveries.c.state, func.count()).group_by(deliveries.c.state))
    return {state: count for state, count in rows}


def held_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(messages.c.list_name, func.count())
                        .where(messages.c.kind == "post", messages.c.state == "held")
                        .group_by(messages.c.list_name))
    return {name: count for name, count in rows}


PENDING = ("queued", "deferred", "sending")


def pending_by_list(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(messages.c.list_name, func.count())
                        .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
                        .where(deliveries.c.state.in_(PENDING)).group_by(messages.c.list_name))
    return {name or "": count for name, count in rows}


def pending_domains(conn: Connection) -> dict[str, int]:
    """Deliveries not yet done, by recipient domain: what a routing change would reroute."""
    counts: dict[str, int] = {}
    for (recipient,) in conn.execute(select(deliveries.c.recipient).where(deliveries.c.state.in_(PENDING))):
        domain = recipient.rpartition("@")[2].lower()
        counts[domain] = counts.get(domain, 0) + 1
    return counts


def counts_by_state_and_transport(conn: Connection) -> list[tuple[str, str, int]]:
    rows = conn.execute(select(deliveries.c.state, deliveries.c.transport, func.count())
                        .group_by(deliveries.c.state, deliveries.c.transport)
                        .order_by(deliveries.c.state, deliveries.c.transport))
    return [(state, transport or "-", count) for state, transport, count in rows]


def pending_recipients(conn: Connection, limit: int = 100_000) -> list[str]:
    return list(conn.execute(select(deliveries.c.recipient).where(deliveries.c.state.in_(PENDING)).limit(limit))
                .scalars())


def delivery(conn: Connection, delivery_id: int) -> dict | None:
    row = conn.execute(
        select(deliveries, messages.c.list_name, messages.c.parent_id, messages.c.size)
        .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
        .where(deliveries.c.id == delivery_id)).mappings().first()
    return dict(row) if row else None


def retry(conn: Connection, now: float, *, failed_only: bool, post_id: int | None = None) -> int:
    """Failed (or, with failed_only False, all) deliveries back to queued, due now."""
    states = ("failed",) if failed_only else ("failed", "deferred", "delivered", "suppressed")
    where = [deliveries.c.state.in_(states)]
    if post_id is not None:
        post_copies = select(messages.c.id).where((messages.c.id == post_id) | (messages.c.parent_id == post_id))
        where.append(deliveries.c.message_id.in_(post_copies))
    return conn.execute(update(deliveries).where(*where).values(
        state="queued", next_attempt_at=now, lease_until=None, updated_at=now)).rowcount


def drop(conn: Connection, delivery_id: int) -> bool:
    """Remove one delivery from the queue (an operator's decision; never done by the engine)."""
    return conn.execute(delete(deliveries).where(deliveries.c.id == delivery_id,
                                                  deliveries.c.state != "sending")).rowcount > 0


def last_selection(conn: Connection, list_name: str, limit: int) -> tuple[int, float, int, list[str]] | None:
    """The recipients of the list's latest distributed post: who was selected the last time."""
    post = conn.execute(select(messages.c.id, messages.c.created_at)
                        .where(messages.c.kind == "post", messages.c.list_name == list_name,
                               messages.c.state == "queued")
                        .order_by(messages.c.id.desc()).limit(1)).first()
    if post is None:
        return None
    total = conn.execute(select(func.count()).where(deliveries.c.message_id == post.id)).scalar_one()
    addresses = conn.execute(select(deliveries.c.recipient).where(deliveries.c.message_id == post.id)
                             .order_by(deliveries.c.recipient).limit(limit)).scalars().all()
    return post.id, post.created_at, total, list(addresses)
