"""The list archive: every accepted post, as distributed, in a Maildir (the default) or an mbox file.

The SMTP path only adds a row to `archive_pending`; the housekeeping job writes the posts and then, in
one transaction, takes them off that list. Writes are synced to disk before they are recorded, and a
repeat after a crash writes nothing twice: a Maildir file is named after its post (written to tmp/,
synced, linked into new/, the folder synced), and an mbox file longer than its recorded length is cut
back to it before appending (a crash between writing and recording leaves exactly that)."""

from __future__ import annotations

import logging
import mailbox
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timezone
from email.parser import BytesParser
from email.policy import default
from email.utils import parseaddr, parsedate_to_datetime

from sqlalchemy.engine import Connection

from listkeeper.manifests.archive import ArchiveFormat
from listkeeper.store import archive as store_archive
from listkeeper.store.archive import Post

from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.archive")
BATCH = 500  # posts per list per round; the rest follow in the next round


def _unix(data: bytes) -> bytes:
    """Mailboxes on disk use LF line ends; what we spool has SMTP's CRLF."""
    return data.replace(b"\r\n", b"\n")


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def maildir_name(post: Post, hostname: str) -> str:
    """time.unique.host as Maildir names go; the unique part is the post's id, so a name means a post."""
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{int(post.created_at)}.P{post.message_id:010d}.{host}"


def write_maildir(path: str, posts: Iterable[Post], hostname: str) -> int:
    """Returns how many posts were written (those found there already are not)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mailbox.Maildir(path, create=True)  # tmp/ new/ cur/
    seen: set[str] | None = None  # names already read (moved to cur/ by a reader), looked up once
    count = 0
    for post in posts:
        name = maildir_name(post, hostname)
        dest = os.path.join(path, "new", name)
        if os.path.exists(dest):
            continue
        if seen is None:
            seen = {entry.name.split(":")[0] for entry in os.scandir(os.path.join(path, "cur"))}
        if name in seen:
            continue
        tmp = os.path.join(path, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # a leftover of a crash is rewritten
        try:
            os.write(fd, _unix(post.data))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, dest)
        except FileExistsError:
            pass
        os.unlink(tmp)
        count += 1
    _sync_dir(os.path.join(path, "new"))
    return count


def _envelope_sender(data: bytes) -> str:
    headers = BytesParser(policy=default).parsebytes(data, headersonly=True)
    return parseaddr(str(headers.get("from", "") or ""))[1] or "MAILER-DAEMON"


def write_mbox(path: str, posts: Iterable[Post], recorded: int | None) -> tuple[int, int]:
    """Append to the mbox (locked, 'From ' lines quoted by the mailbox module); returns how many posts
    were written and the file's new length."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    box = mailbox.mbox(path, create=True)
    box.lock()
    count = 0
    try:
        if recorded is not None and os.path.getsize(path) > recorded:
            os.truncate(path, recorded)  # written but never recorded (a crash): written again below
        for post in posts:
            message = mailbox.mboxMessage(_unix(post.data))
            message.set_from(_envelope_sender(post.data), time.gmtime(post.created_at))
            box.add(message)
            count += 1
        box.flush()  # fsyncs the file
    finally:
        box.unlock()
        box.close()
    if parent:
        _sync_dir(parent)
    return count, os.path.getsize(path)


def archive_pending(conn: Connection, snapshot: Snapshot, now: float) -> None:
    """The housekeeping job. Files are written first, with no database lock held (the SMTP path keeps
    spooling); the pending rows are removed only after every write, in the job's one transaction."""
    lists = {lst.name: lst for lst in snapshot.lists.values()}
    written: list[tuple[str, list[int], int, int | None]] = []
    not_kept: list[str] = []
    for name, ids in sorted(store_archive.pending_by_list(conn, BATCH).items()):
        lst = lists.get(name)
        if lst is None:  # a deleted list: its posts stay pending while its data is restorable
            continue
        settings = lst.spec.archive
        if not settings.enabled:
            not_kept.append(name)
            continue
        path = settings.location(name)
        try:
            if settings.format is ArchiveFormat.mbox:
                progress = store_archive.progress(conn, name)
                count, size = write_mbox(path, store_archive.posts(conn, ids),
                                         progress.mbox_size if progress else None)
            else:
                count, size = write_maildir(path, store_archive.posts(conn, ids), snapshot.hostname(lst.domain)), None
        except OSError as exc:  # the operator's to fix; the posts stay pending and are tried next round
            log.error("archive list=%s path=%s cannot be written: %s", name, path, exc)
            continue
        written.append((name, ids, count, size))
        log.info("archive list=%s archived=%d path=%s", name, count, path)
    for name, ids, count, size in written:
        store_archive.written(conn, name, ids, count, size, now)
    for name in not_kept:
        store_archive.skip(conn, name)


# -- reading -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    date: str
    sender: str
    subject: str
    message_id: str


def _entry(headers) -> Entry:
    try:
        moment = parsedate_to_datetime(str(headers.get("date", "")))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        date = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, IndexError):
        date = "-"

    def text(name: str) -> str:
        try:
            return " ".join(str(headers.get(name, "") or "").split())
        except (TypeError, ValueError):
            return ""

    return Entry(date, parseaddr(text("from"))[1] or text("from") or "-", text("subject") or "(no subject)",
                 text("message-id") or "-")


def entries(lst: ListConfig, limit: int) -> tuple[list[Entry], int]:
    """The archive's last `limit` posts, newest last, and how many it holds. Only their headers are read."""
    settings = lst.spec.archive
    path = settings.location(lst.name)
    parser = BytesParser(policy=default)
    if settings.format is ArchiveFormat.mbox:
        if not os.path.exists(path):
            return [], 0
        box = mailbox.mbox(path, create=False)
        try:
            keys = box.keys()  # in the file's order: the order archived
            found = [_entry(parser.parsebytes(box.get_bytes(k), headersonly=True))
                     for k in (keys[-limit:] if limit else [])]
        finally:
            box.close()
        return found, len(keys)
    if not os.path.isdir(os.path.join(path, "new")):
        return [], 0
    box = mailbox.Maildir(path, factory=None, create=False)
    keys = sorted(box.keys())  # names begin with the arrival time
    found = []
    for key in keys[-limit:] if limit else []:
        with box.get_file(key) as fh:
            found.append(_entry(parser.parse(fh, headersonly=True)))
    return found, len(keys)
