"""The scheduler when the store fails under it: a real SQLite file whose statements are made to fail (an
event hook raising the driver's OperationalError on a chosen statement), a real SMTP sink on loopback."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager

from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from listkeeper.delivery.scheduler import Scheduler
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.store import queue as store_queue
from listkeeper.store.queue import InboundRecord, PostRecord
from listkeeper.store.tables import deliveries

from .conftest import reconcile_folder, wait_for
from .test_scheduler import config, post, sink, states  # noqa: F401 - sink: the relay fixture

# Leases.release_at_start / release_expired (store/leases.py release_all, release_expired)
RELEASE = "SET state=?, lease_until=?, updated_at=? WHERE deliveries.id IN"
CLAIM = "deliveries.next_attempt_at <="  # the claim's due condition
OUTCOMES = "transport=?, last_error=?"  # record_outcomes
LIST_NAMES = "SELECT messages.id, messages.list_name \nFROM messages"  # list_names (the backups' lookup)


@contextmanager
def failing(match: str, times: int | None = None, when: str = "before_cursor_execute", act=None):
    """Statements of any engine that contain `match` fail (`times` at most; None: until the block ends),
    as a locked or broken database fails them; with `act`, `act()` runs there instead of a failure and
    says whether it counts."""
    seen = {"failed": 0}

    def hook(conn, cursor, statement, parameters, context, executemany):
        if match not in statement or (times is not None and seen["failed"] >= times):
            return
        if act is not None:
            seen["failed"] += act()
            return
        seen["failed"] += 1
        raise sqlite3.OperationalError("database is locked")

    event.listen(Engine, when, hook)
    try:
        yield seen
    finally:
        event.remove(Engine, when, hook)


def run_task(engine) -> asyncio.Task:
    return next(t for t in engine.tasks if t.get_name() == "delivery-scheduler")


def spool(store, recipients: list[str]) -> None:
    data = b"From: poster@example.org\r\nTo: members@example.org\r\nSubject: Hi\r\n\r\nBody\r\n"
    post_record = PostRecord("members", "queued", "", data, "members-bounces@example.org", tuple(recipients))
    with store.engine.begin() as conn:
        store_queue.spool(conn, [InboundRecord("poster@example.org", ("members@example.org",), data, 1,
                                               (post_record,))], store.now())


async def test_a_store_error_while_releasing_leases_at_start_is_retried(tmp_path, sink, engine_for, caplog):
    folder = config(tmp_path, sink.port, ["a@example.net"], delivery="    run_interval: 0.2s")
    with caplog.at_level(logging.ERROR, logger="listkeeper.delivery"):
        with failing(RELEASE) as fault:
            engine = await engine_for(folder)
            await wait_for(lambda: fault["failed"] >= 2)
        await post(engine)
        await wait_for(lambda: sink.rcpts() == ["a@example.net"])
    assert not run_task(engine).done()
    failures = [r for r in caplog.records if r.getMessage().startswith("delivery run failed")]
    assert len(failures) == fault["failed"], "each failure is logged once"


async def stop_within(scheduler: Scheduler, task: asyncio.Task, bound: float) -> float:
    started = time.monotonic()
    await scheduler.drain(task, bound)
    return time.monotonic() - started


async def test_a_stop_ends_the_wait_after_a_run_limit(tmp_path, sink, store_url, caplog):
    folder = config(tmp_path, sink.port, [], delivery="    run_limit: 1\n    run_interval: 60s")
    store = reconcile_folder(folder, store_url)
    spool(store, ["a@example.net", "b@example.net"])
    snapshot = load_snapshot(store)
    scheduler = Scheduler(store, lambda: snapshot)
    task = asyncio.create_task(scheduler.run())
    await wait_for(lambda: len(sink.received) == 1)
    await asyncio.sleep(0.3)  # the run is over; the wait for the next one has begun
    with caplog.at_level(logging.WARNING, logger="listkeeper.delivery"):
        assert await stop_within(scheduler, task, 5) < 2
    assert not any("still in flight" in r.getMessage() for r in caplog.records)
    assert sorted(states(store_url).values()) == ["delivered", "queued"]
    store.close()


async def test_a_stop_ends_the_wait_after_a_failed_run(tmp_path, sink, store_url, caplog):
    folder = config(tmp_path, sink.port, [], delivery="    run_interval: 60s")
    store = reconcile_folder(folder, store_url)
    spool(store, ["a@example.net"])
    snapshot = load_snapshot(store)
    scheduler = Scheduler(store, lambda: snapshot)
    with failing(CLAIM) as fault:
        task = asyncio.create_task(scheduler.run())
        await wait_for(lambda: fault["failed"] >= 1)
        await asyncio.sleep(0.3)
        with caplog.at_level(logging.WARNING, logger="listkeeper.delivery"):
            assert await stop_within(scheduler, task, 5) < 2
    assert not any("still in flight" in r.getMessage() for r in caplog.records)
    assert states(store_url) == {"a@example.net": "queued"}
    store.close()


def backup_config(tmp_path, sink_port: int, subscribers: list[str]):
    return config(tmp_path, sink_port, subscribers, delivery=(
        f"    run_interval: 0.2s\n    backup: {{folder: {tmp_path / 'backup'}, path: '{{list}}/{{recipient}}.eml'}}"))


async def test_a_failed_outcome_write_keeps_the_backup_copies(tmp_path, sink, engine_for, store_url):
    engine = await engine_for(backup_config(tmp_path, sink.port, ["a@example.net"]))
    with failing(OUTCOMES, times=1) as fault:
        await post(engine)
        await wait_for(lambda: fault["failed"] == 1)
    await wait_for(lambda: states(store_url) == {"a@example.net": "delivered"})
    await wait_for(lambda: (tmp_path / "backup" / "members" / "a@example.net.eml").exists())
    assert sink.rcpts() == ["a@example.net"]


async def test_a_failed_list_lookup_for_backups_loses_no_report_and_no_backup(tmp_path, sink, engine_for,
                                                                             store_url, caplog):
    """One write step has a failed delivery (no route) and a sent one (a backup); the backups' lookup fails
    while the store is down: the failure is still reported, and the backup is written once it is back."""
    folder = backup_config(tmp_path, sink.port, ["a@example.net", "x@nowhere.test"])
    routes = folder / "routes.yaml"
    routes.write_text(routes.read_text().replace('    - match: "*"\n', '    - match: "example.net"\n'))
    engine = await engine_for(folder)
    with caplog.at_level(logging.ERROR, logger="listkeeper.delivery"), failing(LIST_NAMES) as fault:
        await post(engine)
        await wait_for(lambda: states(store_url) == {"a@example.net": "delivered", "x@nowhere.test": "failed"})
        notice = await wait_for(lambda: list((tmp_path / "local").glob("*postmaster*")))
        assert b"x@nowhere.test" in notice[0].read_bytes()
        assert fault["failed"] >= 1
    await wait_for(lambda: (tmp_path / "backup" / "members" / "a@example.net.eml").exists())
    assert not any("worker failed" in r.getMessage() for r in caplog.records)
    await wait_for(lambda: not engine.scheduler._bodies)  # the failed message's body is released once reported


async def test_a_delivery_dropped_while_being_claimed_is_not_sent(tmp_path, sink, engine_for, store_url):
    """`listkeeper queue drop` racing a claim: either the drop wins (the delivery is gone and never sent)
    or the claim does (the drop is refused while the delivery is being sent, or comes after). Never both."""
    people = ["a@example.net", "drop@example.net", "c@example.net"]
    engine = await engine_for(config(tmp_path, sink.port, people))
    other = reconcile_folder(tmp_path / "conf", store_url)  # the operator's CLI: a connection of its own
    dropped: list[tuple[bool, float]] = []

    def drop(delivery_id: int) -> None:
        with other.engine.begin() as conn:
            done = store_queue.drop(conn, delivery_id)
        dropped.append((done, time.monotonic()))

    def drop_during_the_claim() -> bool:  # run by the claim of the post, after its reading
        with other.engine.connect() as conn:
            found = conn.execute(select(deliveries.c.id).where(deliveries.c.recipient == "drop@example.net",
                                                               deliveries.c.state == "queued")).scalar()
        if found is None:  # an earlier claim: the post is not spooled yet
            return False
        operator = threading.Thread(target=drop, args=(found,))
        operator.start()
        operator.join(1)  # (a claim holding the write lock would make it wait for the commit)
        return True

    with failing(CLAIM, times=1, when="after_cursor_execute", act=drop_during_the_claim):
        await post(engine)
        await wait_for(lambda: dropped)
        await wait_for(lambda: {"a@example.net", "c@example.net"} <= set(sink.rcpts()))
    await asyncio.sleep(0.3)
    other.close()
    (done, at), = dropped
    sent_at = [r.at for r in sink.received if "drop@example.net" in r.rcpts]
    assert len(sent_at) <= 1
    if done:  # a drop after its sending (a delivered delivery may be dropped) is no race
        assert all(sent < at for sent in sent_at), "sent after it was dropped"
    else:
        assert sent_at, "the drop was refused: the claim had it, and it was sent"


async def test_a_store_error_reading_a_body_again_leaves_no_claim_stranded(tmp_path, sink, store_url, caplog):
    """A post's body is released while a claim of more of its deliveries runs (its first copy was sent
    meanwhile), so the claim reads it again; the store fails that read. The claimed delivery goes back to
    the queue: a node renewing its leases never lets it expire, so it would stay 'sending' for good."""
    folder = config(tmp_path, sink.port, [], delivery="    run_interval: 0.2s")
    store = reconcile_folder(folder, store_url)
    spool(store, ["a@example.net", "b@example.net"])
    with store.engine.begin() as conn:  # b falls due during the second claim, after a's copy was sent
        conn.execute(deliveries.update().where(deliveries.c.recipient == "b@example.net")
                     .values(next_attempt_at=store.now() + 3600))
    snapshot = load_snapshot(store)
    scheduler = Scheduler(store, lambda: snapshot, lease=0.6, node="n1")
    claims = {"n": 0}

    def second_claim_after_the_release() -> bool:
        claims["n"] += 1
        if claims["n"] != 2:
            return False
        with store.engine.begin() as conn:
            conn.execute(deliveries.update().where(deliveries.c.recipient == "b@example.net")
                         .values(next_attempt_at=0))
        deadline = time.monotonic() + 5
        while scheduler._bodies and time.monotonic() < deadline:  # a's copy sent: the body is released
            time.sleep(0.01)
        return True

    read = {"failed": 0}

    def the_read_again_fails() -> bool:
        if claims["n"] < 2 or read["failed"]:
            return False
        read["failed"] += 1
        raise sqlite3.OperationalError("database is locked")

    with failing("ORDER BY deliveries.next_attempt_at", times=1, act=second_claim_after_the_release), \
            failing("SELECT messages.id, messages.data", act=the_read_again_fails), \
            caplog.at_level(logging.ERROR, logger="listkeeper.delivery"):
        tasks = [asyncio.create_task(scheduler.run()), asyncio.create_task(scheduler.keep_leases())]
        await wait_for(lambda: claims["n"] >= 2 and read["failed"] == 1)
    try:
        await wait_for(lambda: states(store_url)["b@example.net"] != "sending", timeout=3)
        assert states(store_url) == {"a@example.net": "delivered", "b@example.net": "deferred"}
    finally:
        await scheduler.drain(tasks[0], 2)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        store.close()
