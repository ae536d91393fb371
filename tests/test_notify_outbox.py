"""The notification outbox: events committed by commands run by hand in another process reach the
running engine's Notifications (real SQLite file and PostgreSQL stores, the real CLI as a process)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from listkeeper import notify
from listkeeper.engine.server import ServeOptions, start_engine
from listkeeper.manifests import load_manifests
from listkeeper.notify import bus
from listkeeper.notify import outbox as notify_outbox
from listkeeper.notify.bus import Inbox
from listkeeper.reconcile import reconcile
from listkeeper.store import Store
from listkeeper.store import outbox as store_outbox
from listkeeper.store.tables import notify_outbox as outbox_table

from .conftest import REPO, pickup_routes, wait_for, write
from .test_notify_engine import hooks, lines, notification  # noqa: F401 - hooks is a fixture

FIRED = {"list": "newcomers", "event": "reminder", "subscribers": 1, "source": "cli", "address": "bob@example.net"}


def rows(store: Store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all()


def test_with_no_engine_attached_an_event_is_written_in_the_transaction_that_made_it(store, caplog):
    assert bus._inboxes == ()  # a command run by hand
    before = time.time()
    with store.writing() as conn:
        notify.on_commit(conn, "event.fired", **FIRED)
        notify.on_commit(conn, "event.fired", list="newcomers")  # a bug in the emitting code: logged, dropped
    (row,) = rows(store)
    assert row.type == "event.fired" and json.loads(row.attributes) == FIRED
    assert before <= row.at <= time.time() and len(row.event_id) == 32
    assert "system event event.fired not emitted" in caplog.text
    with pytest.raises(RuntimeError):
        with store.writing() as conn:
            notify.on_commit(conn, "event.fired", **{**FIRED, "address": "alice@example.org"})
            raise RuntimeError("the command fails")
    assert rows(store) == [row]  # a rolled-back action announces nothing


def test_events_no_engine_drained_for_a_week_give_way(store):
    """Commands run with no engine at all (a tick from cron) cannot grow the outbox for ever."""
    with store.writing() as conn:
        for i in range(3):
            store_outbox.add(conn, f"{i:032x}", "event.fired", FIRED, 1000.0 + i)
        store_outbox.add(conn, "a" * 32, "event.fired", FIRED, 1000.0 + store_outbox.KEEP + 1.5)
    assert [r.event_id for r in rows(store)] == [f"{2:032x}", "a" * 32]  # older than a week: gone


async def test_a_drain_offers_each_event_once_with_its_own_time_and_id_and_deletes_it(store, caplog):
    with store.writing() as conn:
        for i in range(3):
            store_outbox.add(conn, f"{i:032x}", "event.fired", {**FIRED, "subscribers": i + 1}, 100.0 + i)
        store_outbox.add(conn, "f" * 32, "config.applied", {"generation": 2, "source": "cli"}, 200.0)
        store_outbox.add(conn, "e" * 32, "no.such_type", {}, 300.0)  # written by another version
    inbox = Inbox(asyncio.get_running_loop(), clock=lambda: 5000.0)
    inbox.wanted = frozenset({"event.fired"})  # no rule wants config.applied
    bus.attach(inbox)
    try:
        assert await asyncio.to_thread(notify_outbox.drain, store, 2) == 2  # bounded
        assert await asyncio.to_thread(notify_outbox.drain, store, 2) == 2
        assert await asyncio.to_thread(notify_outbox.drain, store, 2) == 1
        assert await asyncio.to_thread(notify_outbox.drain, store, 2) == 0
        taken = await inbox.take(1)
    finally:
        bus.detach(inbox)
    assert [(e.id, e.at, e.attributes["subscribers"]) for e in taken] == [
        (f"{i:032x}", 100.0 + i, i + 1) for i in range(3)]
    assert taken[0].attributes["address"] == "bob@example.net"
    assert rows(store) == []  # what no rule wants, and what cannot be read, is deleted too
    assert "outbox event eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee dropped: unknown event type 'no.such_type'" in caplog.text


def test_events_are_deleted_only_when_the_drain_commits(store):
    with store.writing() as conn:
        store_outbox.add(conn, "a" * 32, "event.fired", FIRED, 100.0)
    with pytest.raises(RuntimeError):
        with store.writing() as conn:
            assert len(store_outbox.take(conn, 10)) == 1
            raise RuntimeError("the engine fails before the commit")
    assert [r.event_id for r in rows(store)] == ["a" * 32]  # taken again at the next drain: at least once


def test_two_drains_at_once_never_take_the_same_event(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: drains cannot overlap")
    with store.writing() as conn:
        for i in range(3):
            store_outbox.add(conn, f"{i:032x}", "event.fired", FIRED, 100.0 + i)
    with store.engine.begin() as first:
        mine = store_outbox.take(first, 2)
        with store.engine.begin() as second:
            second.execute(text("SET LOCAL lock_timeout = '2s'"))  # skipped, never waited for
            theirs = store_outbox.take(second, 10)
    assert [r["event_id"] for r in mine] == [f"{i:032x}" for i in range(2)]
    assert [r["event_id"] for r in theirs] == [f"{2:032x}"]
    assert rows(store) == []


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "events.yaml", (REPO / "examples" / "events.yaml").read_text())
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LISTKEEPER_STORE": url})


async def test_events_fired_by_hand_in_another_process_reach_the_engines_notification(tmp_path, conf, db_url,
                                                                                      hooks):
    hook = await hooks()
    log_file = tmp_path / "var" / "fired.jsonl"
    write(conf, "notifications.yaml", notification("fired", "event.fired, subscription.changed", f"""
    - type: webhook
      url: {hook.url}/fired
    - type: log
      path: {log_file}"""))
    store = Store.open(db_url)
    reconcile(load_manifests([conf]), store)
    engine = await start_engine(store, ServeOptions(port=0, http_port=None, outbox_interval=0.2))
    try:
        fired = await asyncio.to_thread(cli, db_url, "events", "fire", "newcomers", "reminder",
                                        "--member", "bob@example.net")
        assert fired.stdout.strip() == "newcomers/reminder: fired for 1", fired.stderr
        (logged,) = await wait_for(lambda: lines(log_file))
        assert logged["notification"] == "fired" and logged["event"]["type"] == "event.fired"
        assert logged["event"]["attributes"] == FIRED
        await wait_for(lambda: hook.received)
        assert hook.received[0].json["event"] == logged["event"]  # the same event, the same id
        ticked = await asyncio.to_thread(cli, db_url, "tick", "--at", "2030-01-01T00:00")
        assert ticked.stdout.strip() == "newcomers/daily: fired for 2", ticked.stderr
        await wait_for(lambda: len(lines(log_file)) == 2)
        assert lines(log_file)[1]["event"]["attributes"] == {"list": "newcomers", "event": "daily",
                                                            "subscribers": 2, "source": "tick"}
        await asyncio.sleep(1.0)  # five more drains: nothing is announced twice
        assert len(lines(log_file)) == 2 and len(hook.received) == 2
        with store.engine.begin() as conn:  # bounces disabled bob's delivery
            conn.execute(text("UPDATE subscribers SET state = 'disabled' WHERE address = 'bob@example.net'"))
        enabled = await asyncio.to_thread(cli, db_url, "members", "enable", "newcomers", "bob@example.net")
        assert enabled.returncode == 0, enabled.stderr
        await wait_for(lambda: len(lines(log_file)) == 3)
        assert lines(log_file)[2]["event"]["attributes"] == {"list": "newcomers", "address": "bob@example.net",
                                                            "action": "enabled", "source": "cli"}
        assert rows(store) == []
    finally:
        await asyncio.wait_for(engine.stop(), timeout=20)
        store.close()
