"""Retention: finished deliveries, and the messages nothing needs any more, go after the retention period;
everything queued, deferred, sending, held or pending stays. A real SQLite file and PostgreSQL."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys

from sqlalchemy import func, select

from listkeeper.engine.housekeeping import JOBS, run_round
from listkeeper.engine.retention import Forget
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.store import Store, queue
from listkeeper.store import bounces as store_bounces
from listkeeper.store.tables import archive_pending, bounces, deliveries, digest_pending, holds, messages

DAY = 86400.0
OLD = 1000.0
NOW = OLD + 40 * DAY  # past the default 30 days
RECENT = NOW - DAY
CLI = [sys.executable, "-m", "listkeeper"]


def post(store: Store, at: float, recipients: tuple[str, ...], outcomes: dict[str, str], *, digest: bool = False,
         list_name: str = "members") -> tuple[int, int]:
    """An accepted post to a list, its deliveries claimed and settled a second later as `outcomes` says
    (a recipient not named stays queued). Returns (inbound id, list copy id)."""
    with store.writing() as conn:
        (inbound, posts), = queue.spool_posts(conn, [queue.InboundRecord("a@example.org", ("members@example.org",),
                                                                          b"raw", 1, (
            queue.PostRecord(list_name, "queued", "member", b"Subject: hi\r\n\r\nx\r\n", "members-bounces@example.org",
                             recipients, digest=digest),))], at)
        copy = posts[0][0]
        rows = conn.execute(select(deliveries.c.id, deliveries.c.recipient).where(deliveries.c.message_id == copy))
        queue.record_outcomes(conn, [queue.Outcome(row.id, outcomes[row.recipient], "relay:smarthost", None,
                                                   at + 3600 if outcomes[row.recipient] == "deferred" else None)
                                     for row in rows if row.recipient in outcomes], at + 1)
    return inbound, copy


def held(store: Store, at: float, token: str) -> tuple[int, int]:
    with store.writing() as conn:
        (inbound, posts), = queue.spool_posts(conn, [queue.InboundRecord("x@example.net", ("members@example.org",),
                                                                          b"raw", 1, (
            queue.PostRecord("members", "held", "not_member", b"Subject: hi\r\n\r\nx\r\n", "members-bounces@example.org",
                             (), hold=queue.Hold(token, "x@example.net", "hi", at + 60 * DAY)),))], at)
    return inbound, posts[0][0]


def bounce(store: Store, at: float) -> tuple[int, int]:
    with store.writing() as conn:
        (inbound, posts), = queue.spool_posts(conn, [queue.InboundRecord("", ("members-bounces@example.org",),
                                                                          b"raw", 1, (
            queue.PostRecord("members", store_bounces.PENDING, "bounce", b"Subject: failure\r\n\r\nx\r\n", "",
                             ("members-bounces@example.org",)),))], at)
    return inbound, posts[0][0]


def ids(store: Store, table) -> set[int]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(table.c.id)).scalars())


def forget(store: Store, at: float = NOW, **limits) -> None:
    done = run_round(store, load_snapshot(store), at, {"retention.forget": Forget(**limits)})
    assert done.failed == ()


def test_old_finished_deliveries_and_their_messages_go(store, caplog):
    inbound, copy = post(store, OLD, ("ok@example.net", "bad@example.net", "no@example.net"),
                         {"ok@example.net": "delivered", "bad@example.net": "failed", "no@example.net": "suppressed"})
    recent_inbound, recent_copy = post(store, RECENT, ("ok@example.net",), {"ok@example.net": "delivered"})
    with caplog.at_level(logging.INFO, logger="listkeeper.housekeeping"):
        forget(store)
    assert ids(store, messages) == {recent_inbound, recent_copy}
    with store.engine.connect() as conn:
        assert queue.queue_counts(conn) == {"delivered": 1}
    assert "housekeeping.retention deliveries=3 messages=2 holds=0" in caplog.text


def test_what_is_pending_or_unfinished_stays(store):
    waiting_inbound, waiting = post(store, OLD, ("later@example.net", "queued@example.net", "ok@example.net"),
                                    {"later@example.net": "deferred", "ok@example.net": "delivered"})
    held_inbound, held_copy = held(store, OLD, "t0ken")
    digest_inbound, digest_copy = post(store, OLD, ("ok@example.net",), {"ok@example.net": "delivered"}, digest=True)
    with store.writing() as conn:  # written to the archive; still waiting for the digest
        conn.execute(archive_pending.delete())
    archive_inbound, archive_copy = post(store, OLD, ("ok@example.net",), {"ok@example.net": "delivered"},
                                         digest=True, list_name="other")
    with store.writing() as conn:  # sent in a digest; not yet written to the archive
        conn.execute(digest_pending.delete().where(digest_pending.c.list_name == "other"))
    unread = bounce(store, OLD)  # not read yet
    newest = post(store, RECENT, ("ok@example.net",), {"ok@example.net": "delivered"})
    forget(store)
    assert ids(store, messages) == {waiting_inbound, waiting, held_inbound, held_copy, digest_inbound, digest_copy,
                                    archive_inbound, archive_copy, *unread, *newest}
    with store.engine.connect() as conn:
        assert queue.queue_counts(conn) == {"deferred": 1, "queued": 1, "delivered": 1}  # the recent one
        assert conn.execute(select(holds.c.token)).scalars().all() == ["t0ken"]


def test_a_post_goes_once_its_last_delivery_finished_long_enough_ago(store):
    inbound, copy = post(store, OLD, ("later@example.net",), {"later@example.net": "deferred"})
    newest = post(store, RECENT, ("ok@example.net",), {"ok@example.net": "delivered"})
    with store.writing() as conn:  # delivered at last, 35 days before NOW
        conn.execute(deliveries.update().where(deliveries.c.message_id == copy)
                     .values(state="delivered", updated_at=NOW - 35 * DAY, next_attempt_at=NOW - 35 * DAY))
    forget(store, keep=40 * DAY)
    assert {inbound, copy} <= ids(store, messages)
    forget(store)
    assert ids(store, messages) == set(newest)


def test_decided_holds_and_read_bounces_go_the_bounce_history_stays(store):
    inbound, copy = held(store, OLD, "gone")
    with store.writing() as conn:
        conn.execute(holds.update().values(decided_at=OLD + 10, decision="discarded", decided_by="mod"))
        conn.execute(messages.update().where(messages.c.id == copy).values(state="discarded"))
    _, read = bounce(store, OLD)
    unread_parent, unreadable = bounce(store, OLD)  # kept as 'bounce-error' for a person to look at
    with store.engine.begin() as conn:
        store_bounces.mark(conn, unreadable, store_bounces.UNREADABLE)
    with store.writing() as conn:
        store_bounces.mark(conn, read, store_bounces.DONE)
        store_bounces.record(conn, "members", "bad@example.net", "hard", True, read, "550", OLD)
    newest = post(store, RECENT, ("ok@example.net",), {"ok@example.net": "delivered"})
    forget(store)
    assert ids(store, messages) == set(newest) | {unread_parent, unreadable}
    with store.engine.connect() as conn:
        assert conn.execute(select(holds)).all() == []
        assert conn.execute(select(bounces.c.address, bounces.c.message_id)).all() == [("bad@example.net", None)]


def test_a_round_removes_a_batch_and_the_next_the_rest(store):
    for n in range(5):
        post(store, OLD + n, (f"r{n}@example.net",), {f"r{n}@example.net": "delivered"})
    newest = post(store, RECENT, ("ok@example.net",), {"ok@example.net": "delivered"})
    forget(store, deliveries=2, messages=3)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deliveries)).scalar() == 4
    assert len(ids(store, messages)) == 12 - 3  # 2 copies freed, then an inbound parent of one
    forget(store, deliveries=2, messages=3)
    forget(store, deliveries=2, messages=3)
    forget(store, deliveries=2, messages=3)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deliveries)).scalar() == 1
    assert ids(store, messages) == set(newest)


def test_the_newest_message_and_delivery_are_kept_so_ids_are_never_reused(store):
    """SQLite numbers a new row after the highest id left: removing the newest would give its id again."""
    post(store, OLD, ("ok@example.net",), {"ok@example.net": "delivered"})
    second = post(store, OLD, ("ok@example.net",), {"ok@example.net": "delivered"})
    newest_delivery = max(ids(store, deliveries))
    forget(store)
    assert ids(store, messages) == set(second)
    assert ids(store, deliveries) == {newest_delivery}


def test_housekeeping_runs_retention_by_default():
    assert isinstance(JOBS["retention.forget"], Forget) and JOBS["retention.forget"].keep == 30 * DAY


def test_tick_forgets_and_queue_and_queue_wait_still_work(tmp_path):
    url = f"sqlite:///{tmp_path}/lk.db"
    store = Store.open(url)
    post(store, OLD, ("ok@example.net", "bad@example.net"), {"ok@example.net": "delivered", "bad@example.net": "failed"})
    recent_inbound, _ = post(store, RECENT, ("ok@example.net", "later@example.net"),
                             {"ok@example.net": "delivered", "later@example.net": "deferred"})
    store.close()
    env = {**os.environ, "LISTKEEPER_STORE": url}
    at = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).isoformat()
    ticked = subprocess.run(CLI + ["tick", "--at", at, "--keep-finished", "30d"], capture_output=True, text=True,
                            env=env)
    assert ticked.returncode == 0, ticked.stderr
    counts = subprocess.run(CLI + ["queue"], capture_output=True, text=True, env=env).stdout.splitlines()
    assert [line.split() for line in counts[1:]] == [["deferred", "relay:smarthost", "1"],
                                                     ["delivered", "relay:smarthost", "1"]]
    waited = subprocess.run(CLI + ["queue", "wait", str(recent_inbound), "--timeout", "0"], capture_output=True,
                            text=True, env=env)
    assert waited.returncode == 2 and waited.stdout.strip() == (
        f"post {recent_inbound}: 2 deliveries: 1 deferred, 1 delivered; not over after 0 s.")
    gone = subprocess.run(CLI + ["queue", "wait", "1", "--timeout", "0"], capture_output=True, text=True, env=env)
    assert gone.returncode == 1 and gone.stderr.strip() == "Error: no post 1"


def test_keep_finished_must_be_a_duration(tmp_path):
    bad = subprocess.run(CLI + ["tick", "--keep-finished", "a month"], capture_output=True, text=True,
                         env={**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"})
    assert bad.returncode == 2 and "is not a duration such as 30d" in bad.stderr
    shown = subprocess.run(CLI + ["serve", "--help"], capture_output=True, text=True).stdout
    assert "--keep-finished DURATION" in shown
