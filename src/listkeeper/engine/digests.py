"""Digests: digest members get no single posts but, on the list's schedule or as soon as the pending posts
reach a size, one MIME digest (RFC 2046 multipart/digest) with a table of contents first and each post
as a message/rfc822 part, numbered by volume and issue as Mailman numbers its digests.

Deciding (what is due, how the posts split into issues, which number comes next) is pure; `send_due` is
the housekeeping job and `send_now` what `listkeeper digest send` runs."""

from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.policy import SMTP, default
from email.utils import format_datetime, parseaddr
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy.engine import Connection

from listkeeper.manifests.digests import Digest, NewVolume
from listkeeper.manifests.lists import ListType
from listkeeper.store import Store
from listkeeper.store import digests as store_digests
from listkeeper.store import directory as member_directory
from listkeeper.store import queue as store_queue
from listkeeper.store import subscribers
from listkeeper.store.digests import Issue, Pending
from listkeeper.store.queue import PostRecord

from .policy import list_id
from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.digests")


# -- deciding (pure) ---------------------------------------------------------------------------------------

def next_scheduled(settings: Digest, after: float) -> float | None:
    """The first scheduled time after `after`, in the schedule's time zone (DST included); None: no schedule."""
    if not settings.scheduled:
        return None
    start = datetime.fromtimestamp(after, ZoneInfo(settings.timezone))
    return croniter(settings.schedule, start).get_next(float)


def due(settings: Digest, pending: Pending, now: float) -> str | None:
    """Why the pending posts go out now ('size' or 'schedule'), or None. A post waits at most until the
    first scheduled time after it arrived; a quiet list sends nothing."""
    if pending.posts == 0:
        return None
    if pending.size >= settings.max_size:
        return "size"
    scheduled = next_scheduled(settings, pending.oldest)
    if scheduled is not None and scheduled <= now:
        return "schedule"
    return None


def issues(posts: list[tuple[int, int]], max_size: int, everything: bool) -> list[list[int]]:
    """Split pending posts (id, size), oldest first, into digests of at most max_size (at least one post
    each). Unless `everything`, only while what is left still reaches max_size (the size trigger)."""
    out: list[list[int]] = []
    left = sum(size for _, size in posts)
    current: list[int] = []
    current_size = 0
    for message_id, size in posts:
        if current and current_size + size > max_size:
            if not everything and left < max_size:
                return out
            out.append(current)
            left -= current_size
            current, current_size = [], 0
        current.append(message_id)
        current_size += size
    if current and (everything or left >= max_size):
        out.append(current)
    return out


def period(new_volume: NewVolume, moment: datetime) -> str:
    if new_volume is NewVolume.yearly:
        return f"{moment.year}"
    if new_volume is NewVolume.monthly:
        return f"{moment.year}-{moment.month:02d}"
    if new_volume is NewVolume.weekly:
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return "-"


def next_number(last: Issue | None, current_period: str) -> tuple[int, int]:
    """(volume, issue): the issue counts up within a volume; a new period starts the next volume at 1."""
    if last is None:
        return 1, 1
    if last.period != current_period:
        return last.volume + 1, 1
    return last.volume, last.issue + 1


# -- building the message (pure) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    subject: str
    sender: str


def _entry(data: bytes, prefix: str | None) -> Entry:
    headers = BytesParser(policy=default).parsebytes(data, headersonly=True)
    subject = " ".join(str(headers.get("subject", "") or "").split()) or "(no subject)"
    if prefix and subject.startswith(prefix):
        subject = subject[len(prefix):].strip() or "(no subject)"
    name, address = parseaddr(str(headers.get("from", "") or ""))
    return Entry(subject, name or address or "(unknown sender)")


def contents(lst: ListConfig, title: str, entries: list[Entry]) -> str:
    spec = lst.spec
    lines = [title, "", "Contents:", ""]
    lines += [f"  {i:>3}. {e.subject} ({e.sender})" for i, e in enumerate(entries, 1)]
    lines += [""]
    if spec.type is not ListType.announce:
        lines += [f"To post to the list, write to {spec.address}.",
                  "When replying, change the subject to that of the post you answer.", ""]
    lines += [f"To receive each post as it is sent, send 'digest off' to {lst.address_for('request')};",
              "to leave the list, send 'unsubscribe'.", f"The list's owners: {lst.address_for('owner')}", ""]
    return "\n".join(lines)


def build(lst: ListConfig, posts: list[bytes], volume: int, issue: int, hostname: str, now: float) -> bytes:
    """multipart/digest: a text/plain table of contents, then each post as it was distributed."""
    spec = lst.spec
    settings = spec.digest
    local = datetime.fromtimestamp(now, ZoneInfo(settings.timezone))
    subject = settings.subject.format(list=lst.name, volume=volume, issue=issue, date=local.date().isoformat())
    entries = [_entry(data, spec.subject_prefix) for data in posts]
    digest = EmailMessage(policy=SMTP)
    for name, value in (
            ("From", lst.address_for("request")), ("To", spec.address), ("Subject", subject),
            ("Date", format_datetime(datetime.fromtimestamp(now, timezone.utc))),
            ("Message-ID", f"<{uuid.uuid4().hex}@{hostname}>"),
            ("Reply-To", spec.address if spec.type is not ListType.announce else None),
            ("List-Id", f"<{list_id(lst)}>"),
            ("List-Post", "NO" if spec.type is ListType.announce else f"<mailto:{spec.address}>"),
            ("List-Help", f"<mailto:{lst.address_for('request')}?subject=help>"),
            ("List-Unsubscribe", f"<mailto:{lst.address_for('request')}?subject=unsubscribe>"),
            ("List-Owner", f"<mailto:{lst.address_for('owner')}>"),
            ("Precedence", "list"), ("X-Loop", spec.address),
            ("MIME-Version", "1.0"), ("Content-Type", "multipart/digest")):  # the boundary is made when written
        if value is not None:
            digest[name] = value
    digest.set_payload([])
    text = contents(lst, f"{subject}: {len(posts)} post{'s' if len(posts) != 1 else ''}", entries)
    toc = MIMEPart(policy=SMTP)
    toc.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    toc["Content-Description"] = "Contents"
    digest.attach(toc)
    for data in posts:
        part = MIMEPart(policy=SMTP)
        part.set_content(BytesParser(policy=SMTP).parsebytes(data))
        digest.attach(part)
    return digest.as_bytes()


# -- sending -----------------------------------------------------------------------------------------------

def receivers(lst: ListConfig, snapshot: Snapshot, now: float):
    """The list's active digest members, streamed from the store; on a dynamic list only those its query
    still selects, checked a chunk at a time against the directory (the selection is never run whole)."""
    if lst.spec.members is None:
        return lambda conn: subscribers.stream(conn, lst.name, "digest")
    directory = snapshot.directories[lst.spec.members.directory]
    query = tuple(lst.spec.members.query)
    moment = datetime.fromtimestamp(now, timezone.utc)

    def selected(conn: Connection):
        members = subscribers.stream(conn, lst.name, "digest")
        while chunk := list(itertools.islice(members, store_digests.LOOKUP_CHUNK)):
            found = member_directory.selected_among(directory, query, chunk, moment)
            yield from (a for a in chunk if a in found)

    return selected


def _anyone(recipients, conn: Connection) -> bool:
    probe = recipients(conn)
    try:
        return next(probe, None) is not None
    finally:
        probe.close()  # the rest of the members is never read


def _with_archive_copy(recipients, archive: str | None):
    if not archive:
        return recipients
    return lambda conn: itertools.chain(recipients(conn), (archive,))


def send(conn: Connection, snapshot: Snapshot, lst: ListConfig, now: float, trigger: str,
         everything: bool) -> list[tuple[Issue, PostRecord]]:
    """The list's digests to queue now (several when the pending posts exceed max_size), numbered and
    recorded; the posts they carry leave the pending list. Nobody to send to: the posts just leave it."""
    store_digests.lock_sending(conn, lst.name)
    return _send_locked(conn, snapshot, lst, now, trigger, everything)


def _send_locked(conn: Connection, snapshot: Snapshot, lst: ListConfig, now: float, trigger: str,
                 everything: bool) -> list[tuple[Issue, PostRecord]]:
    recipients = receivers(lst, snapshot, now)
    if not _anyone(recipients, conn):
        dropped = store_digests.clear(conn, lst.name)
        if dropped:
            log.info("digest list=%s no digest members; %d pending post(s) dropped", lst.name, dropped)
        return []
    settings = lst.spec.digest
    pending = store_digests.pending_posts(conn, lst.name)
    sizes = dict(pending)
    chosen = issues(pending, settings.max_size, everything)
    wanted = [i for ids in chosen for i in ids]
    taken = store_digests.take(conn, lst.name, wanted)
    if len(taken) < len(wanted):
        log.info("digest list=%s %d post(s) taken meanwhile by another sender", lst.name, len(wanted) - len(taken))
    hostname = snapshot.hostname(lst.domain)
    current = period(settings.new_volume, datetime.fromtimestamp(now, ZoneInfo(settings.timezone)))
    last = store_digests.last_issue(conn, lst.name)  # read once the posts are ours: numbered after any other sender's
    out: list[tuple[Issue, PostRecord]] = []
    for ids in filter(None, ([i for i in ids if i in taken] for ids in chosen)):
        volume, number = next_number(last, current)
        data = build(lst, store_digests.post_data(conn, ids), volume, number, hostname, now)
        last = Issue(lst.name, volume, number, current, len(ids), sum(sizes[i] for i in ids), trigger, now)
        store_digests.record(conn, last)
        out.append((last, PostRecord(lst.name, "queued", f"digest: Vol {volume}, Issue {number} ({len(ids)} "
                                     f"posts, {trigger})", data, lst.address_for("bounces"),
                                     _with_archive_copy(recipients, snapshot.delivery.archive_copy), verp=True)))
        log.info("digest list=%s volume=%d issue=%d posts=%d trigger=%s", lst.name, volume, number, len(ids),
                 trigger)
    return out


def _by_name(snapshot: Snapshot) -> dict[str, ListConfig]:
    return {lst.name: lst for lst in snapshot.lists.values()}


def send_due(conn: Connection, snapshot: Snapshot, now: float) -> list[PostRecord]:
    """The housekeeping job: every list's digests that are due, decided once it holds the list's sending
    lock (a hand send may have taken the due posts meanwhile, leaving only posts not due yet). A deleted
    list's pending posts are kept (its data stays restorable); a list nobody receives as a digest just
    drops them."""
    lists = _by_name(snapshot)
    out: list[PostRecord] = []
    for name, pending in sorted(store_digests.pending_by_list(conn).items()):
        lst = lists.get(name)
        if lst is None:
            continue
        if not store_digests.has_members(conn, name):
            store_digests.clear(conn, name)
            continue
        if due(lst.spec.digest, pending, now) is None:
            continue
        store_digests.lock_sending(conn, name)
        pending = store_digests.pending_by_list(conn, name).get(name)  # what a sender we waited for left
        trigger = due(lst.spec.digest, pending, now) if pending is not None else None
        if trigger is not None:
            out.extend(post for _, post in _send_locked(conn, snapshot, lst, now, trigger,
                                                        everything=trigger == "schedule"))
    return out


@dataclass(frozen=True)
class Sent:
    issues: tuple[Issue, ...]
    recipients: int  # deliveries queued per digest


def send_now(store: Store, snapshot: Snapshot, list_name: str, now: float) -> Sent:
    """`listkeeper digest send LIST`: every pending post of the list, in one transaction."""
    lst = _by_name(snapshot).get(list_name)
    if lst is None:
        raise LookupError(f"no list {list_name!r} in the applied configuration")
    with store.writing() as conn:
        sent = send(conn, snapshot, lst, now, "hand", everything=True)
        ids = store_queue.insert_posts(conn, [(None, snapshot.generation, post) for _, post in sent], now)
        recipients = store_digests.recipient_count(conn, ids[0]) if ids else 0
    return Sent(tuple(issue for issue, _ in sent), recipients)
