"""Bounces: whom each one is for, how it counts, and when delivery to a subscriber stops.

Mail to LIST-bounces@DOMAIN or its VERP form LIST-bounces+alice=example.net@DOMAIN is stored by the
fan-out as a post in state 'bounce' (our own RFC 3464 reports, injected to the VERP return path, take the
same way). The housekeeping job `bounces.process` reads them, not the spool's transaction: parsing a bounce
(a big one carries the whole returned message) would hold up every SMTP client waiting on the group
commit, and one odd message that makes a detector fail would otherwise fail the whole batch. Stored first
and read within a minute, nothing is lost: a round that fails leaves its bounces pending for the next, a
bounce that cannot be read is kept as 'bounce-error' and logged, and `listkeeper tick` reads them by hand.

Attribution: a VERP address names the subscriber whatever the report says (a forwarded address may be
the one that failed); the report still says whether it was hard or soft. An unreadable message with a
null sender to a VERP address counts as a hard bounce, as in Mailman; one from a person, an auto-reply
(an out-of-office answer to the return path) or a report naming no failure (a success notice, a read
receipt) is no bounce.

Anyone can send mail to a bounce address, so a bounce counts only when it answers our mail: its VERP
address carries the tag delivery signed it with (delivery/verp.py). Every mail of ours that can bounce
(list copies, digests, template mails, notices) leaves with one, so any other bounce is recorded for
the subscriber as not counted, with the reason (`unattributed: ...`), and logged; its score is
untouched: an untagged or wrongly tagged VERP address (anyone can write one), and a report to the plain
LIST-bounces address naming failed addresses (anyone can have a notice sent to any address, by a
command with a forged sender, and then forge reports naming it). The bounces of mail sent before an
upgrade to tags are not told from forged ones: a week of bounces that do not count delays disabling a
dead address; it never disables a live one.

Score (per list, `spec.bounces`): a hard bounce adds `hard` (1), a soft one `soft` (0.5), at most once a
day (UTC) per subscriber; after `stale_after` (7 days) without a bounce the score starts again from zero;
at `threshold` (5) delivery is disabled and the list's owner (its moderators) is told. Every bounce of a
subscriber is recorded in the `bounces` table, with whether it counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP

from sqlalchemy.engine import Connection

from listkeeper import notify
from listkeeper.manifests.addresses import split_verp, verp_signed_by
from listkeeper.manifests.lists import Bounces
from listkeeper.store import bounces as store_bounces
from listkeeper.store import subscribers
from listkeeper.store.bounces import BouncePost, Standing
from listkeeper.store.queue import PostRecord
from listkeeper.store.signing import verp_key

from . import bounce_reports
from .bounce_reports import HARD, SOFT
from .membership import moderators
from .replies import notice
from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.bounces")
BATCH = 1000  # bounces read per round; more wait for the next minute
DAY = 86400
NOT_SIGNED = "verp token not signed by this server"


@dataclass(frozen=True)
class Assessment:
    counted: bool
    score: float  # the score after this bounce
    disable: bool
    note: str


def assess(before: Standing, kind: str, rules: Bounces, at: float) -> Assessment:
    """How one bounce changes a subscriber's score. Pure."""
    stale = before.last_at is not None and at - before.last_at >= rules.stale_after
    score = 0.0 if stale else before.score
    if not stale and before.last_counted_at is not None and int(before.last_counted_at // DAY) == int(at // DAY):
        return Assessment(False, score, score >= rules.threshold, "not counted: one bounce a day counts")
    score += rules.hard if kind == HARD else rules.soft
    note = "counted after a quiet period: the score started again from zero" if stale and before.score else "counted"
    return Assessment(True, score, score >= rules.threshold, note)


SIGNED, UNTAGGED, WRONG_TAG, PLAIN = "signed", "untagged", "wrong tag", "plain"


@dataclass(frozen=True)
class Attributed:
    address: str
    kind: str
    detail: str
    token: str = SIGNED  # what the address it came to proves: signed | untagged | wrong tag | plain


def attribute(post: BouncePost, lst: ListConfig, key: bytes) -> list[Attributed]:
    """Whom the bounce is for, how it failed, and what its address proves. Pure."""
    found = bounce_reports.read(post.data)
    bounce_address = lst.address_for("bounces")
    verped = split_verp(post.to, bounce_address)
    if verped is None:
        return [Attributed(f.address, f.kind, f"report: {f.detail}", PLAIN) for f in found]
    subscriber, tag = verped
    token = UNTAGGED if tag is None else SIGNED if verp_signed_by(key, bounce_address, subscriber, tag) else WRONG_TAG
    if found:
        kind = HARD if any(f.kind == HARD for f in found) else SOFT
        detail = next(f.detail for f in found if f.kind == kind)
        return [Attributed(subscriber, kind, f"verp: {detail}", token)]
    sender = post.mail_from.lower()
    if sender and not sender.startswith(("mailer-daemon@", "postmaster@")):
        return []  # a person, or an auto-reply sent with a sender
    if bounce_reports.is_report(post.data) or bounce_reports.is_auto_reply(post.data):
        return []  # a report naming no failure (delivered, a read receipt), or an out-of-office answer
    return [Attributed(subscriber, HARD, "verp: a bounce in a format not recognised", token)]


def verp_subscriber(to: str, lst: ListConfig) -> str | None:
    verped = split_verp(to, lst.address_for("bounces"))
    return verped[0] if verped else None


def unproven(item: Attributed) -> str | None:
    """Why the bounce cannot count for its subscriber, or None when it answers our mail."""
    if item.token == SIGNED:
        return None
    if item.token == WRONG_TAG:
        return NOT_SIGNED
    if item.token == UNTAGGED:
        return f"{NOT_SIGNED} (no tag)"
    return "a report to the plain bounce address (every mail of ours leaves with a tagged VERP address)"


def process(conn: Connection, snapshot: Snapshot, now: float) -> list[PostRecord]:
    """The housekeeping job: read pending bounces, record and score them; returns the owner notices."""
    lists = {lst.name: lst for lst in snapshot.lists.values()}
    notices: list[PostRecord] = []
    pending = store_bounces.pending(conn, BATCH)
    key = verp_key(conn) if pending else b""
    for post in pending:
        lst = lists.get(post.list_name)
        if lst is None:
            log.info("bounce message=%d list=%s: the list no longer exists; not counted", post.id, post.list_name)
            store_bounces.mark(conn, post.id, store_bounces.DONE)
            continue
        try:
            found = attribute(post, lst, key)
        except Exception:  # kept for a person to look at; the other bounces go on
            log.exception("bounce message=%d list=%s could not be read", post.id, lst.name)
            store_bounces.mark(conn, post.id, store_bounces.UNREADABLE)
            continue
        if not found:
            log.info("bounce message=%d list=%s to=%s from=%s: no failure in it (not a bounce); not counted",
                     post.id, lst.name, post.to, post.mail_from or "<>")
        for item in found:
            why = unproven(item)
            if why is None:
                notices.extend(count(conn, snapshot, lst, post, item, now))
            else:
                unattributed(conn, lst, post, item, why)
        store_bounces.mark(conn, post.id, store_bounces.DONE)
    return notices


def unattributed(conn: Connection, lst: ListConfig, post: BouncePost, item: Attributed, why: str) -> None:
    """A bounce not proven to answer our mail: shown in the subscriber's history, never scored."""
    log.warning("bounce message=%d list=%s address=%s to=%s: unattributed, not counted (%s)", post.id, lst.name,
                item.address, post.to, why)
    if subscribers.get(conn, lst.name, item.address) is not None:
        store_bounces.record(conn, lst.name, item.address, item.kind, False, post.id,
                             f"{item.detail}; {store_bounces.UNATTRIBUTED}{why}", post.at)


def count(conn: Connection, snapshot: Snapshot, lst: ListConfig, post: BouncePost, item: Attributed,
          now: float) -> list[PostRecord]:
    """Record one subscriber's bounce, update their score, and disable them at the threshold."""
    member = subscribers.get(conn, lst.name, item.address)
    if member is None:
        log.info("bounce message=%d list=%s address=%s: not a subscriber; not recorded", post.id, lst.name,
                 item.address)
        return []
    if not member.receiving:
        why = "delivery is already disabled" if member.state == "disabled" else (
            "unsubscribed" if member.state == "unsubscribed" else "receives no posts")
        store_bounces.record(conn, lst.name, member.address, item.kind, False, post.id,
                             f"{item.detail}; not counted: {why}", post.at)
        log.info("bounce list=%s address=%s kind=%s counted=no (%s)", lst.name, member.address, item.kind, why)
        return []
    rules = lst.spec.bounces
    verdict = assess(store_bounces.standing(conn, lst.name, member.address), item.kind, rules, post.at)
    detail = item.detail if verdict.note == "counted" else f"{item.detail}; {verdict.note}"
    store_bounces.record(conn, lst.name, member.address, item.kind, verdict.counted, post.id, detail, post.at)
    store_bounces.set_score(conn, lst.name, member.address, verdict.score, post.at)
    log.info("bounce list=%s address=%s kind=%s counted=%s score=%g", lst.name, member.address, item.kind,
             "yes" if verdict.counted else "no", verdict.score)
    if not verdict.disable:
        return []
    subscribers.disable(conn, lst.name, member.address, now, "bounce",
                        f"bounce score {verdict.score:g} reached the threshold {rules.threshold:g}")
    notify.on_commit(conn, "bounce.disabled", list=lst.name, address=member.address, score=verdict.score,
                     threshold=rules.threshold)
    notify.on_commit(conn, "subscription.changed", list=lst.name, address=member.address, action="disabled",
                     source="bounce")
    log.warning("bounce list=%s address=%s: delivery disabled (score %g, threshold %g)", lst.name, member.address,
                verdict.score, rules.threshold)
    if not rules.notify_owner:
        return []
    return [owner_notice(lst, snapshot, member.address, verdict.score, item, post.data, now)]


def owner_notice(lst: ListConfig, snapshot: Snapshot, address: str, score: float, item: Attributed, bounce: bytes,
                 now: float) -> PostRecord:
    """What the moderators get when a subscriber's delivery is disabled, with the last bounce attached."""
    rules = lst.spec.bounces
    body = (f"Delivery of {lst.spec.address} to {address} has been disabled: their bounce score reached "
            f"{score:g}, and the list's threshold is {rules.threshold:g}.\n\n"
            f"The last bounce was {item.kind}: {item.detail}\n\n"
            f"They stay a member and keep their other roles, but receive nothing until delivery is enabled again, "
            f"by subscribing again by mail or by an operator:\n\n  listkeeper members enable {lst.name} {address}\n\n"
            f"Every subscriber's bounce score:\n\n  listkeeper bounces {lst.name}\n\nThe last bounce is attached.")
    mail = notice(lst.address_for("owner"), lst.address_for("owner"),
                  f"{address} disabled on {lst.spec.address}: too many bounces", body,
                  snapshot.hostname(lst.domain), now, loop_marker=lst.spec.address)
    try:
        attachment = EmailMessage(policy=SMTP)
        attachment.set_content(message_from_bytes(bounce, policy=SMTP))
        attachment["Content-Description"] = "The last bounce"
        mail.make_mixed()
        mail.attach(attachment)
    except Exception:  # an unparseable bounce is not worth losing the notice over
        log.warning("bounce attachment for %s on %s left out: it could not be re-encoded", address, lst.name)
    return PostRecord(lst.name, "queued", "bounces: notice to the owner", mail.as_bytes(), lst.address_for("bounces"),
                      moderators(lst), verp=True)


def forget_stale(conn: Connection, snapshot: Snapshot, now: float) -> None:
    """The housekeeping job: scores quiet for longer than their list's stale_after go back to zero."""
    for lst in snapshot.lists.values():
        forgotten = store_bounces.forget_stale(conn, lst.name, now - lst.spec.bounces.stale_after)
        if forgotten:
            log.info("bounces list=%s: %d stale score(s) set back to zero", lst.name, forgotten)
