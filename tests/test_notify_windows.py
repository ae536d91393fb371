"""max_frequency kept in the store: one run per window across engine nodes on one database and across
restarts (real SQLite file and PostgreSQL stores; real engines on loopback; a log file action)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

from listkeeper.engine.housekeeping import JOBS
from listkeeper.engine.server import ServeOptions, start_engine
from listkeeper.manifests import load_manifests
from listkeeper.reconcile import reconcile
from listkeeper.store import Store
from listkeeper.store import notify_windows as windows
from listkeeper.store.tables import notify_windows as windows_table

from .conftest import wait_for
from .test_notify_engine import barred, lines, make_conf, notification

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=timezone.utc).timestamp()


def test_of_nodes_claiming_one_window_at_once_exactly_one_wins_and_the_next_run_carries_the_rest(db_url):
    stores = [Store.open(db_url) for _ in range(4)]
    try:
        start, claims = threading.Barrier(len(stores)), []

        def claim(store: Store) -> None:
            start.wait()
            with store.writing() as conn:
                claims.append(windows.claim(conn, "relay-down", "k", T0, 900.0))

        threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(c.won for c in claims) == [False, False, False, True]
        assert {c.opened_at for c in claims} == {T0}
        with stores[0].writing() as conn:
            assert not windows.claim(conn, "relay-down", "k", T0 + 899, 900.0, held=2).won  # 1 + 2 more held
            assert windows.claim(conn, "relay-down", "other", T0 + 899, 900.0).won  # its own window
            windows.add_held(conn, {("relay-down", "k"): 4})
            later = windows.claim(conn, "relay-down", "k", T0 + 900, 900.0, held=1)
        assert (later.won, later.count, later.since) == (True, 3 + 3 + 4 + 1 + 1, T0)
    finally:
        for store in stores:
            store.close()


def test_closed_windows_are_forgotten_by_housekeeping(store):
    day = 86400.0
    with store.writing() as conn:
        for key, at in [("open", T0), ("closed-yesterday", T0 - day - 901), ("closed-today", T0 - 901)]:
            windows.claim(conn, "r", key, at, 900.0)
        windows.claim(conn, "r", "held", T0 - 3 * day, 900.0)
        windows.claim(conn, "r", "held", T0 - 3 * day + 1, 900.0)  # a count no run came for (yet)
        windows.claim(conn, "r", "held-long-ago", T0 - 8 * day, 900.0)
        windows.claim(conn, "r", "held-long-ago", T0 - 8 * day + 1, 900.0)
        JOBS["notify.forget_windows"](conn, None, T0)
        kept = conn.execute(windows_table.select().order_by(windows_table.c.key)).all()
    assert [r.key for r in kept] == ["closed-today", "held", "open"]


def held_back(store: Store) -> int:
    with store.engine.connect() as conn:
        return sum(r.held_back for r in conn.execute(windows_table.select()))


async def test_two_nodes_and_a_restart_run_a_rule_once_per_window(tmp_path, db_url):
    """Each message.barred reaches both engines of this process (the bus is the process's), as a relay
    failing is seen by every node: the rule runs once per window in all, and the run after it carries
    every event both nodes held back, and those of an engine started again inside the window."""
    log_file = tmp_path / "events.jsonl"
    conf = make_conf(tmp_path, notification("refused", "message.barred", f"""
    - type: log
      path: {log_file}""", "  max_frequency: {every: 15m, per: [rule]}"))
    now = [T0]
    stores = [Store.open(db_url, clock=lambda: now[0]) for _ in range(3)]
    reconcile(load_manifests([conf]), stores[0])
    engines = [await start_engine(stores[i], ServeOptions(port=0, http_port=None, node=f"mx{i + 1}"))
               for i in range(2)]
    try:
        await barred(engines[0].port)
        await barred(engines[1].port)
        await wait_for(lambda: held_back(stores[0]) == 3)  # 2 events x 2 nodes: one ran, three held back
        await asyncio.sleep(0.3)
        assert len(lines(log_file)) == 1
        await engines[0].stop()  # a restart inside the window: it does not run again
        engines[0] = await start_engine(stores[2], ServeOptions(port=0, http_port=None, node="mx1"))
        now[0] += 10 * 60
        await barred(engines[0].port)
        await wait_for(lambda: held_back(stores[0]) == 5)
        assert len(lines(log_file)) == 1
        now[0] += 6 * 60  # the window is over: one node runs, carrying the count
        await barred(engines[1].port)
        await wait_for(lambda: len(lines(log_file)) == 2)
        await wait_for(lambda: held_back(stores[0]) == 1)  # the other node's event opens the next count
        await asyncio.sleep(0.3)
        first, later = lines(log_file)
        assert (first["count"], first["previous_run"]) == (1, None)
        assert (later["count"], later["previous_run"]) == (6, "2030-03-04T09:00:00Z")
        assert later["event"]["at"] == "2030-03-04T09:16:00Z"
    finally:
        for engine in engines:
            await asyncio.wait_for(engine.stop(), timeout=20)
        for store in stores:
            store.close()
