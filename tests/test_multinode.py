"""Several engine nodes on one PostgreSQL store, in process: one leader for the periodic work, and
configuration notices (LISTEN/NOTIFY) that reach every node without waiting for a poll."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import text

from listkeeper.engine.leadership import Leadership
from listkeeper.engine.reload import ReloadOptions
from listkeeper.engine.server import ServeOptions, start_engine
from listkeeper.manifests import load_manifests
from listkeeper.reconcile import reconcile
from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store.nodes import LEADER_APPLICATION

from .conftest import DOMAIN, pg_database, pickup_routes, wait_for, write
from .test_reload import OTHER, members


def test_one_leader_at_a_time_and_another_when_it_is_gone():
    with pg_database() as url:
        store = Store.open(url)
        one, two = Leadership(store, "mx1"), Leadership(store, "mx2")
        try:
            assert (one.check(), two.check()) == (True, False)
            assert (one.check(), two.check()) == (True, False)  # the leader keeps the lead
            with store.engine.connect() as conn:  # mx1's session dies (its process was killed)
                conn.execute(text("select pg_terminate_backend(pid) from pg_stat_activity "
                                  "where datname = current_database() and application_name = :name"),
                             {"name": f"{LEADER_APPLICATION}mx1"})
            assert one.check() is False  # it notices at its next check ...
            assert two.check() is True  # ... and mx2 takes over at its next try
            assert one.check() is False
            two.close()  # a clean stop hands the lead on without a wait
            assert one.check() is True
        finally:
            one.close()
            two.close()
            store.close()


def test_each_store_has_its_own_leader_and_node_names_on_one_server():
    """Two installations (say staging and production) on one PostgreSQL server: each database's status
    names its own leader, and a node name taken in one is free in the other."""
    from listkeeper.store import nodes

    with pg_database() as first_url, pg_database() as second_url:
        first, second = Store.open(first_url), Store.open(second_url)
        lead = Leadership(first, "mx1")
        try:
            assert lead.check() is True
            with first.engine.connect() as conn:
                assert nodes.leader(conn) == "mx1" and nodes.named_elsewhere(conn, "mx1")
            with second.engine.connect() as conn:
                assert nodes.leader(conn) is None
                assert not nodes.named_elsewhere(conn, "mx1")
            other = Leadership(second, "mx2")
            try:
                assert other.check() is True  # its own lock: the other store's leader is no rival
            finally:
                other.close()
        finally:
            lead.close()
            first.close()
            second.close()


def test_sqlite_has_one_node_which_always_leads(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/lk.db")
    try:
        assert Leadership(store, "mx1").check() and Leadership(store, "mx2").check()
    finally:
        store.close()


async def test_each_applied_generation_is_announced():
    with pg_database() as url:
        store = Store.open(url)
        try:
            heard: list[int] = []

            async def listen():
                async for generation in applied_config.generation_notices(store.engine):
                    heard.append(generation)

            listening = asyncio.create_task(listen())
            await asyncio.sleep(0.5)  # LISTEN is in place
            for _ in range(2):
                with store.engine.begin() as conn:
                    applied_config.write_resources(conn, [], [], 1.0)
            with store.engine.connect() as conn:  # a rolled-back reconcile announces nothing
                applied_config.write_resources(conn, [], [], 1.0)
                conn.rollback()
            await wait_for(lambda: len(heard) >= 2, timeout=5)
            await asyncio.sleep(0.3)
            assert heard == [1, 2]
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        finally:
            store.close()


async def test_a_reconcile_from_ci_reaches_a_node_at_once_without_polling(tmp_path):
    """The node polls only once a minute here: what brings the change in a second is the notice."""
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    with pg_database() as url:
        store = Store.open(url)
        reconcile(load_manifests([conf]), store)
        engine = await start_engine(store, ServeOptions(port=0, http_port=None,
                                                        reload=ReloadOptions(poll_interval=60.0)))
        try:
            await asyncio.sleep(0.5)  # the node is listening
            write(conf, "other.yaml", OTHER)
            ci = Store.open(url)
            reconcile(load_manifests([conf]), ci)  # CI's `listkeeper reconcile`, another process's store
            ci.close()
            await wait_for(lambda: "other@example.org" in engine.snapshot.lists, timeout=3)
            assert engine.snapshot.generation == 2
        finally:
            await asyncio.wait_for(engine.stop(), timeout=20)
            store.close()


def test_nodes_starting_together_migrate_an_empty_database_once():
    with pg_database() as url:
        opened: list[Store] = []
        failures: list[BaseException] = []

        def open_store():
            try:
                opened.append(Store.open(url))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for store in opened:
            store.close()
        assert failures == [] and len(opened) == 3


def test_status_names_the_leader():
    from listkeeper.engine.status import Status, render_status
    from listkeeper.store.nodes import Node
    nodes = (Node("mx1:25", 3, 0.0, 0.0, 100.0, None, "smtp://0.0.0.0:25"),
             Node("mx2:25", 3, 0.0, 0.0, 100.0, None, "smtp://0.0.0.0:25"))
    lines = render_status(Status(100.0, 3, None, None, nodes, {}, 0, leader="mx2:25")).splitlines()
    assert lines[lines.index("Engines:") + 4] == "  leader (list events, digests, reports): mx2:25"
    assert not any("leader" in line for line in render_status(Status(100.0, 3, None, None, nodes, {}, 0)).splitlines())


async def test_sqlite_restarted_under_another_name_resends_what_it_was_sending_at_once(tmp_path):
    """SQLite has one node: whatever a crashed engine was sending is due again when it starts, even when
    its name changed (the default names the host, which a new container changes), not a lease later."""
    from listkeeper.store import queue

    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    try:
        reconcile(load_manifests([conf]), store)
        record = queue.InboundRecord("bob@example.org", ("members@example.org",), b"x", 1, (
            queue.PostRecord("members", "queued", "member", b"Subject: hi\r\n\r\nhi\r\n", "",
                             ("alice@example.org",)),))
        with store.engine.begin() as conn:
            queue.spool(conn, [record], store.now())
            (claimed,) = queue.claim_due(conn, store.now(), 10, 60.0, "old-container:2525")  # then it crashed
        engine = await start_engine(store, ServeOptions(port=0, http_port=None, node="new-container:2525"))
        try:
            def delivered():
                with store.engine.connect() as conn:
                    return queue.delivery(conn, claimed.delivery_id)["state"] == "delivered"
            await wait_for(delivered, timeout=10)
        finally:
            await asyncio.wait_for(engine.stop(), timeout=20)
    finally:
        store.close()


async def test_a_second_node_under_a_live_nodes_name_leaves_its_deliveries_in_flight_alone(tmp_path):
    """Two nodes given the same --node (a copied unit file, two hosts both named localhost): the one
    starting second must not release what the live one is sending, or both send it."""
    from listkeeper.store import queue

    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    with pg_database() as url:
        store = Store.open(url)
        reconcile(load_manifests([conf]), store)
        first = await start_engine(store, ServeOptions(port=0, http_port=None, node="mx"))
        second = None
        try:
            await wait_for(lambda: first.leadership.leading, timeout=10)  # its named connection is open
            record = queue.InboundRecord("bob@example.org", ("members@example.org",), b"x", 1, (
                queue.PostRecord("members", "queued", "member", b"Subject: hi\r\n\r\nhi\r\n", "",
                                 ("alice@example.org",)),))
            with store.engine.begin() as conn:  # what the first node is sending now (claimed as its own)
                queue.spool(conn, [record], store.now())
                (claimed,) = queue.claim_due(conn, store.now(), 10, 60.0, "mx")
            other = Store.open(url)
            second = await start_engine(other, ServeOptions(port=0, http_port=None, node="mx"))
            await asyncio.sleep(1.5)  # its scheduler has started and run
            with store.engine.connect() as conn:
                row = queue.delivery(conn, claimed.delivery_id)
            assert (row["state"], row["attempts"]) == ("sending", 0)
        finally:
            if second is not None:
                await asyncio.wait_for(second.stop(), timeout=20)
                other.close()
            await asyncio.wait_for(first.stop(), timeout=20)
            store.close()


async def test_a_node_whose_clock_runs_ahead_sends_no_live_nodes_delivery_but_takes_over_an_expired_one(tmp_path):
    """Leases are set and compared by the PostgreSQL server's clock: a node whose clock runs ten minutes
    ahead (NTP broken) leaves a live node's deliveries alone, or both send them and a member gets the post
    twice; once that node's lease runs out on the server's clock, it sends them."""
    import time

    from listkeeper.store import queue

    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    with pg_database() as url:
        store = Store.open(url)
        ahead = Store.open(url, clock=lambda: time.time() + 600)
        engine = None
        try:
            reconcile(load_manifests([conf]), store)
            record = queue.InboundRecord("bob@example.org", ("members@example.org",), b"x", 1, (
                queue.PostRecord("members", "queued", "member", b"Subject: hi\r\n\r\nhi\r\n", "",
                                 ("alice@example.org",)),))
            with store.engine.begin() as conn:  # what the live node mx1 is sending now
                queue.spool(conn, [record], store.now())
                (claimed,) = queue.claim_due(conn, store.now(), 10, 60.0, "mx1")
            engine = await start_engine(ahead, ServeOptions(port=0, http_port=None, node="mx2", lease=60.0))
            await asyncio.sleep(1.5)  # its scheduler has started and run

            def row():
                with store.engine.connect() as conn:
                    return queue.delivery(conn, claimed.delivery_id)
            assert (row()["state"], row()["claimed_by"], row()["attempts"]) == ("sending", "mx1", 0)
            with store.engine.begin() as conn:  # mx1 died: its lease ran out, on the server's clock
                conn.execute(text("update deliveries set lease_until = extract(epoch from statement_timestamp()) - 1"))
            engine.scheduler.wake()
            await wait_for(lambda: row()["state"] == "delivered", timeout=10)
            assert (row()["claimed_by"], row()["attempts"]) == ("mx2", 1)
        finally:
            if engine is not None:
                await asyncio.wait_for(engine.stop(), timeout=20)
            ahead.close()
            store.close()


async def test_each_loss_of_the_notice_connection_is_logged(tmp_path, caplog):
    """The listening connection dies (a server restart, a failover) and comes back, twice: each loss is
    a warning and each return is said, not only the first loss of the engine's life."""
    import logging

    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    with pg_database() as url:
        store = Store.open(url)
        reconcile(load_manifests([conf]), store)
        engine = await start_engine(store, ServeOptions(port=0, http_port=None,
                                                        reload=ReloadOptions(poll_interval=60.0)))
        caplog.set_level(logging.INFO, logger="listkeeper")

        def listener() -> int | None:
            with store.engine.connect() as conn:
                return conn.execute(text("select pid from pg_stat_activity where datname = current_database() "
                                         "and query like 'LISTEN%'")).scalar()
        try:
            for _ in range(2):
                pid = await wait_for(listener, timeout=15)
                with store.engine.connect() as conn:
                    conn.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
                await wait_for(lambda: listener() not in (None, pid), timeout=15)  # listening again
            await asyncio.sleep(0.5)
        finally:
            await asyncio.wait_for(engine.stop(), timeout=20)
            store.close()
    lost = [r for r in caplog.records if "listening for configuration notices failed" in r.getMessage()]
    back = [r for r in caplog.records if "listening for configuration notices again" in r.getMessage()]
    assert (len(lost), len(back)) == (2, 2)
