"""Periodic jobs of the engine besides list events: moderation expiry, digests, archives, ...

A job is a function (conn, snapshot, now) -> posts to queue; each runs in its own transaction, and a
failing job is logged and tried again next round without stopping the others. `listkeeper tick` runs
one round by hand (for cron, for tests, for catching up)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from listkeeper.notify import reports
from listkeeper.store import Store
from listkeeper.store import autoresponses, notify_windows
from listkeeper.store import queue as store_queue
from listkeeper.store.queue import PostRecord

from . import archive, bounces, digests, moderation, retention
from .snapshot import Snapshot

log = logging.getLogger("listkeeper.housekeeping")

Job = Callable[[Connection, Snapshot, float], "Iterable[PostRecord] | None"]


def _forget_old_autoresponses(conn: Connection, snapshot: Snapshot, now: float) -> None:
    autoresponses.forget_before(conn, now)


def _forget_closed_windows(conn: Connection, snapshot: Snapshot, now: float) -> None:
    notify_windows.forget_closed(conn, now)


# name -> job; features register theirs here (digests, archives, bounce score staleness, ...)
JOBS: dict[str, Job] = {
    "moderation.expire": moderation.expire,
    "autoresponses.forget": _forget_old_autoresponses,
    "notify.forget_windows": _forget_closed_windows,
    "bounces.process": bounces.process,
    "bounces.forget_stale": bounces.forget_stale,
    "archive.write": archive.archive_pending,
    "digests.send": digests.send_due,
    "reports.send": reports.send_due,
    "retention.forget": retention.Forget(),
}


def jobs_keeping(keep: float) -> dict[str, Job]:
    """JOBS, with finished deliveries and the messages nothing needs kept `keep` seconds."""
    return {**JOBS, "retention.forget": retention.Forget(keep)}


@dataclass(frozen=True)
class Round:
    queued: dict[str, int]  # job -> posts queued
    failed: tuple[str, ...]


def run_round(store: Store, snapshot: Snapshot, now: float, jobs: dict[str, Job] | None = None) -> Round:
    queued: dict[str, int] = {}
    failed: list[str] = []
    for name, job in (JOBS if jobs is None else jobs).items():
        try:
            with store.writing() as conn:  # a job reads, then writes what it read decided
                posts = list(job(conn, snapshot, now) or ())
                if posts:
                    store_queue.insert_posts(conn, [(None, snapshot.generation, p) for p in posts], now)
        except Exception:  # one job failing never stops the others
            log.exception("housekeeping job %s failed", name)
            failed.append(name)
            continue
        if posts:
            queued[name] = len(posts)
            log.info("housekeeping job=%s queued=%d", name, len(posts))
    return Round(queued, tuple(failed))
