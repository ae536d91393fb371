"""What hot reload keeps in the store, on SQLite and PostgreSQL: the configuration history, the engine
nodes, the generation a post's recipients were read at; and two engine nodes on one store."""

from __future__ import annotations

import asyncio

import aiosmtplib
from sqlalchemy import select

from listkeeper.engine.reload import ReloadOptions
from listkeeper.engine.server import ServeOptions, start_engine
from listkeeper.manifests import load_manifests
from listkeeper.reconcile import reconcile
from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store import config_history, nodes, queue
from listkeeper.store.config_history import ConfigChange, Origin
from listkeeper.store.tables import messages

from .conftest import DOMAIN, pickup_routes, wait_for, write
from .test_reload import OTHER, members, watching
from .test_store import store  # noqa: F401 - the fixture: SQLite and PostgreSQL


def test_posts_carry_the_generation_their_recipients_were_read_at(store):  # noqa: F811
    with store.engine.begin() as conn:
        for _ in range(5):
            applied_config.write_resources(conn, [], [], 1.0)
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 3, (  # accepted by a session on generation 3
        queue.PostRecord("l", "queued", "member", b"copy", "", ("b@y.org",)),))
    with store.engine.begin() as conn:
        (inbound,) = queue.spool(conn, [record], 1000.0)
    with store.engine.connect() as conn:
        rows = dict(conn.execute(select(messages.c.kind, messages.c.generation)).all())
    assert rows == {"inbound": 3, "post": 5}


def test_the_history_keeps_applied_and_rejected_changes(store):  # noqa: F811
    origin = Origin("mx1:25", "watch", ("lists.d",))
    with store.engine.begin() as conn:
        config_history.record(conn, ConfigChange(1.0, "applied", 1, origin, ("lists.d/a.yaml",),
                                                 ("create MailingList/a",)))
        config_history.record(conn, ConfigChange(2.0, "rejected", 1, origin, errors=("lists.d/a.yaml:3:1: x: bad",)))
        config_history.record(conn, ConfigChange(3.0, "applied", 2, Origin(), (), ("update MailingList/a",)))
    with store.engine.connect() as conn:
        assert config_history.applied(conn, 1).files == ("lists.d/a.yaml",)
        assert config_history.applied(conn, 2).origin == Origin("reconcile", "cli", ())
        assert config_history.last(conn, "rejected").errors == ("lists.d/a.yaml:3:1: x: bad",)
        assert config_history.applied(conn, 3) is None


def test_the_history_is_trimmed(store, monkeypatch):  # noqa: F811
    monkeypatch.setattr(config_history, "KEEP", 3)
    with store.engine.begin() as conn:
        for i in range(6):
            config_history.record(conn, ConfigChange(float(i), "applied", i, Origin()))
    with store.engine.connect() as conn:
        assert conn.execute(select(config_history.config_history.c.generation)
                            .order_by(config_history.config_history.c.id)).scalars().all() == [3, 4, 5]


def test_nodes_are_recorded(store):  # noqa: F811
    with store.engine.begin() as conn:
        nodes.started(conn, "mx1:25", 4, 10.0, "smtp://0.0.0.0:25")
        nodes.loaded(conn, "mx1:25", 5, 20.0)
        nodes.started(conn, "mx2:25", 5, 15.0, "smtp://0.0.0.0:25")
        nodes.stopped(conn, "mx2:25", 30.0)
        nodes.started(conn, "mx2:25", 5, 40.0, "smtp://0.0.0.0:2525")  # restarted: the same row again
    with store.engine.connect() as conn:
        found = nodes.listing(conn)
    assert [(n.node, n.generation, n.loaded_at, n.stopped_at, n.listening) for n in found] == [
        ("mx1:25", 5, 20.0, None, "smtp://0.0.0.0:25"), ("mx2:25", 5, 40.0, None, "smtp://0.0.0.0:2525")]


async def test_two_nodes_on_one_store_follow_each_other(store, tmp_path):  # noqa: F811
    """On PostgreSQL as well as SQLite: a change one node sees is served by the other within seconds."""
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    reconcile(load_manifests([conf]), store)
    url = store.engine.url.render_as_string(hide_password=False)
    second = Store.open(url)
    started = []
    try:
        one = await start_engine(store, ServeOptions(port=0, http_port=None, reload=ReloadOptions(
            (str(conf),), quiet=0.05, poll_interval=0.2)))
        started.append(one)
        two = await start_engine(second, ServeOptions(port=0, http_port=None, reload=ReloadOptions(poll_interval=0.2)))
        started.append(two)
        await watching(one, conf)
        write(conf, "other.yaml", OTHER)
        await wait_for(lambda: "other@example.org" in two.snapshot.lists, timeout=10)
        errors, reply = await aiosmtplib.send(
            b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n", sender="alice@example.org",
            recipients=["other@example.org"], hostname="127.0.0.1", port=two.port, start_tls=False)
        assert reply.startswith("2.0.0 Queued")
        with second.engine.connect() as conn:
            assert sorted((n.generation, n.stopped_at) for n in nodes.listing(conn)) == [(2, None), (2, None)]
    finally:
        for engine in started:
            await asyncio.wait_for(engine.stop(), timeout=20)
        second.close()


def test_the_applied_memo_fetches_only_what_changed(store):  # noqa: F811
    def write(upserts, deletes=()):
        with store.engine.begin() as conn:
            applied_config.write_resources(conn, [applied_config.ResourceWrite("Relay", n, spec, f"h-{spec['v']}",
                                                                               f"r.yaml:{i}:1")
                                                  for i, (n, spec) in enumerate(upserts)], list(deletes), 1.0)
    write([("a", {"v": 1}), ("b", {"v": 1}), ("c", {"v": 1})])
    memo = applied_config.AppliedMemo()
    with store.engine.connect() as conn:
        first = applied_config.applied_resources(conn, memo)
        assert applied_config.fingerprints(conn) == {("Relay", n): (1, "h-1") for n in "abc"}
    write([("b", {"v": 2})], [("Relay", "c")])
    with store.engine.connect() as conn:
        second = applied_config.applied_resources(conn, memo)
        assert second == applied_config.applied_resources(conn)  # what a plain read gives
    assert second[("Relay", "a")] is first[("Relay", "a")]  # not fetched again
    assert second[("Relay", "b")].spec == {"v": 2} and ("Relay", "c") not in second
