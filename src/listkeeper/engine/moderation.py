"""Held posts: the notice to the moderators, their decision (by mail or by the CLI), and expiry.

A hold is a stored post (messages.state 'held') plus a row in `holds` with a random token. Moderators
answer the notice (it goes to LIST-confirm+TOKEN@DOMAIN) or send `approve|reject|discard TOKEN` to
LIST-request; `listkeeper moderation approve|reject|discard` does the same from the shell."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from listkeeper.store import queue as store_queue
from listkeeper.store.queue import Hold, PostRecord
from listkeeper.store.tables import archive_pending, digest_pending, holds, messages

from .headers import RawMessage
from .membership import receivers
from .replies import notice
from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.moderation")
DECISIONS = ("approve", "reject", "discard")


@dataclass(frozen=True)
class Outcome:
    text: str
    posts: tuple[PostRecord, ...] = ()


def hold_notice(lst: ListConfig, hold: Hold, reason: str, message: RawMessage, hostname: str, now: float) -> bytes:
    """What the moderators get: why it was held, how to decide, and the post itself attached."""
    confirm = f"{lst.local_part}-confirm+{hold.token}@{lst.domain}"
    body = (f"A post to {lst.spec.address} from {hold.sender or '(no sender)'} is held for moderation.\n\n"
            f"Subject: {hold.subject or '(none)'}\n"
            f"Reason: {reason}\n\n"
            f"To approve it, reply to this message (the reply goes to {confirm}).\n\n"
            f"To reject it, reply with the first line 'reject' and, if you like, a reason after it; to drop it "
            f"silently, reply with the first line 'discard'. You can also send 'approve {hold.token}', "
            f"'reject {hold.token} REASON' or 'discard {hold.token}' to {lst.address_for('request')}, or run "
            f"'listkeeper moderation approve {hold.token}'.\n\n"
            f"Undecided, it expires in {int((hold.expires_at - now) // 86400)} days and its sender is told so.")
    mail = notice(lst.address_for("request"), lst.address_for("owner"), f"confirm {hold.token}: held post to "
                  f"{lst.spec.address} from {hold.sender}: {' '.join(hold.subject.split())[:80] or '(no subject)'}", body, hostname, now, reply_to=confirm,
                  loop_marker=lst.spec.address)
    mail.make_mixed()
    held = message_from_bytes(message.to_bytes(), policy=SMTP)
    attachment = EmailMessage(policy=SMTP)
    attachment.set_content(held)
    attachment["Content-Description"] = "The held post"
    mail.attach(attachment)
    return mail.as_bytes()


def pending(conn: Connection, list_name: str | None = None) -> list[dict]:
    query = select(holds).where(holds.c.decided_at.is_(None))
    if list_name is not None:
        query = query.where(holds.c.list_name == list_name)
    return [dict(r._mapping) for r in conn.execute(query.order_by(holds.c.created_at))]


def find(conn: Connection, token: str) -> dict | None:
    row = conn.execute(select(holds).where(holds.c.token == token)).first()
    return dict(row._mapping) if row else None


def _list(snapshot: Snapshot, name: str) -> ListConfig | None:
    return next((lst for lst in snapshot.lists.values() if lst.name == name), None)


def decide(conn: Connection, snapshot: Snapshot, token: str, decision: str, by: str, now: float,
           reason: str = "") -> Outcome:
    """Approve (distribute to the members of now), reject (tell the sender why) or discard a held post."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}")
    hold = find(conn, token)
    if hold is None:
        return Outcome(f"No post is held with token {token}; nothing happened.")
    if hold["decided_at"] is not None:
        return _already(token, hold)
    lst = _list(snapshot, hold["list_name"])
    if lst is None:
        return Outcome(f"The list of the post held with token {token} no longer exists; nothing happened.")
    done = {"approve": "approved", "reject": "rejected", "discard": "discarded"}[decision]
    if not _decided(conn, token, now, done, by):
        return _already(token, find(conn, token))
    post = conn.execute(select(messages.c.id, messages.c.data, messages.c.mail_from)
                        .where(messages.c.id == hold["message_id"])).one()
    conn.execute(update(messages).where(messages.c.id == post.id)
                 .values(state="queued" if decision == "approve" else done))
    log.info("moderation list=%s token=%s decision=%s by=%s", lst.name, token, done, by)
    posts: tuple[PostRecord, ...] = ()
    if decision == "approve":
        store_queue.insert_deliveries(conn, post.id, receivers(lst, snapshot, now)(conn), post.mail_from, True, now)
        conn.execute(digest_pending.insert().values(list_name=lst.name, message_id=post.id, size=len(post.data),
                                                    added_at=now))
        conn.execute(archive_pending.insert().values(list_name=lst.name, message_id=post.id, added_at=now))
    elif decision == "reject" and hold["sender"]:
        text = (f"Your post to {lst.spec.address} (subject: {hold['subject'] or '(none)'}) was rejected by the "
                f"list's moderators." + (f"\n\nReason: {reason}" if reason else ""))
        posts = (_to_sender(lst, snapshot, hold["sender"], f"Your post to {lst.spec.address} was rejected", text,
                            now),)
    return Outcome(f"The post from {hold['sender']} to {lst.spec.address} (token {token}) was {done}.", posts)


def _decided(conn: Connection, token: str, now: float, decision: str, by: str) -> bool:
    """Decide the hold if it is still undecided. What was read before may be stale (on PostgreSQL another
    node's or the CLI's decision can commit meanwhile): only the one whose write changed the row acts."""
    return conn.execute(update(holds).where(holds.c.token == token, holds.c.decided_at.is_(None))
                        .values(decided_at=now, decision=decision, decided_by=by)).rowcount == 1


def _already(token: str, hold: dict) -> Outcome:
    return Outcome(f"The post held with token {token} was already {hold['decision']} (by {hold['decided_by']}); "
                   f"nothing happened.")


def _to_sender(lst: ListConfig, snapshot: Snapshot, sender: str, subject: str, text: str, now: float) -> PostRecord:
    data = notice(lst.address_for("owner"), sender, subject, text, snapshot.hostname(lst.domain), now,
                  loop_marker=lst.spec.address).as_bytes()
    return PostRecord(lst.name, "queued", "moderation: notice to the sender", data, lst.address_for("bounces"),
                      (sender,), verp=True)


def expire(conn: Connection, snapshot: Snapshot, now: float) -> list[PostRecord]:
    """Holds past their expiry: dropped, each sender told; returns the notices to spool."""
    rows = conn.execute(select(holds).where(holds.c.decided_at.is_(None), holds.c.expires_at <= now)).all()
    notices = []
    for hold in rows:
        if not _decided(conn, hold.token, now, "expired", "expiry"):
            log.info("moderation list=%s token=%s decided meanwhile; not expired", hold.list_name, hold.token)
            continue
        conn.execute(update(messages).where(messages.c.id == hold.message_id).values(state="expired"))
        lst = _list(snapshot, hold.list_name)
        log.info("moderation list=%s token=%s decision=expired", hold.list_name, hold.token)
        if lst is not None and hold.sender:
            notices.append(_to_sender(
                lst, snapshot, hold.sender, f"Your post to {lst.spec.address} expired unmoderated",
                f"Your post to {lst.spec.address} (subject: {hold.subject or '(none)'}) waited for the list's "
                f"moderators until it expired, and was not distributed. You may send it again.", now))
    return notices
