"""Hot reload end to end: real engines on loopback, a real SQLite file, real file watching."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib
import pytest
from watchfiles import Change

from listkeeper.engine.reload import ReloadOptions, WatchFilter
from listkeeper.engine.status import read_status

from .conftest import DOMAIN, pickup_routes, wait_for, write


def members(subscribers: list[str], address: str = "members@example.org", kind: str = "discussion") -> str:
    rows = "".join(f"\n    - address: {a}" for a in subscribers)
    return f"""
apiVersion: listkeeper/v1
kind: MailingList
metadata: {{name: members}}
spec:
  address: {address}
  type: {kind}
  subscribers:{rows}
"""


OTHER = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: other}
spec:
  address: other@example.org
  type: discussion
  subscribers:
    - address: alice@example.org
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "members.yaml", members(["alice@example.org", "bob@example.net"]))
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def follow(folder: Path, **options) -> ReloadOptions:
    return ReloadOptions((str(folder),), **{"quiet": 0.05, "longest": 0.5, "poll_interval": 0.2, **options})


async def watching(engine, folder: Path) -> None:
    """The watcher starts in the background: touch a file that is no manifest until a reload round shows it sees."""
    probe = folder / "probe.txt"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        before = engine.follower.reloads
        probe.write_text(str(time.monotonic()))
        try:
            await wait_for(lambda: engine.follower.reloads > before, timeout=0.5)
            probe.unlink()
            await asyncio.sleep(0.2)  # let the removal's reload pass
            return
        except AssertionError:
            continue
    raise AssertionError("the engine never saw a change in its configuration folder")


def post(sender: str, to: str, subject: str) -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


async def send(port: int, to: str = "members@example.org", subject: str = "hi", sender: str = "alice@example.org"):
    return await aiosmtplib.send(post(sender, to, subject), sender=sender, recipients=[to], hostname="127.0.0.1",
                                 port=port, start_tls=False, timeout=30)


def db(store_url: str) -> sqlite3.Connection:
    return sqlite3.connect(store_url.removeprefix("sqlite:///"))


async def test_a_saved_change_is_applied_and_new_sessions_see_it(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf, reload=follow(conf))
    await watching(engine, conf)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await send(engine.port, "other@example.org")
    write(conf, "other.yaml", OTHER)
    await wait_for(lambda: "other@example.org" in engine.snapshot.lists, timeout=10)
    errors, reply = await send(engine.port, "other@example.org")
    assert errors == {} and reply.startswith("2.0.0 Queued")
    with engine.store.engine.connect() as conn:
        status = read_status(conn, engine.store.now())
    assert status.generation == engine.snapshot.generation == 2
    assert status.applied.origin.trigger == "watch" and status.applied.origin.origin == engine.follower.node
    assert status.applied.files == (str(conf / "other.yaml"),)
    assert status.applied.changes == ("create MailingList/other",)
    assert [(n.node, n.generation) for n in status.nodes] == [(engine.follower.node, 2)]


async def test_an_invalid_change_is_refused_with_every_error_and_the_engine_keeps_serving(
        tmp_path, conf, engine_for, caplog):
    engine = await engine_for(conf, reload=follow(conf))
    rejected = []
    engine.on_config_rejected = rejected.append
    await watching(engine, conf)
    caplog.set_level(logging.ERROR, logger="listkeeper.reload")
    write(conf, "members.yaml", members(["alice@example.org", "bob@example.net"], kind="discusion"))
    write(conf, "other.yaml", OTHER.replace("type: discussion", "type: discussion\n  colour: red"))
    await wait_for(lambda: rejected, timeout=10)
    errors = rejected[-1].errors
    assert any(e.startswith(f"{conf / 'members.yaml'}:6:") and "spec.type" in e for e in errors), errors
    assert any(e.startswith(f"{conf / 'other.yaml'}:") and "spec.colour: unknown field" in e for e in errors), errors
    logged = [r.getMessage() for r in caplog.records]
    assert all(any(e in line for line in logged) for e in errors)  # every error, with path:line:column
    assert engine.snapshot.generation == 1 and rejected[-1].generation == 1
    errors_sent, reply = await send(engine.port)  # still serving generation 1
    assert reply.startswith("2.0.0 Queued")
    with engine.store.engine.connect() as conn:
        status = read_status(conn, engine.store.now())
    assert status.rejected.errors == errors and status.rejected.generation == 1
    assert status.generation == 1
    (conf / "other.yaml").unlink()
    write(conf, "members.yaml", members(["alice@example.org", "bob@example.net", "carol@example.com"]))
    await wait_for(lambda: engine.snapshot.generation == 2, timeout=10)


async def test_an_open_session_keeps_its_snapshot_new_sessions_get_the_new_one(tmp_path, conf, engine_for):
    engine = await engine_for(conf, reload=follow(conf))
    await watching(engine, conf)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False, timeout=30) as old:
        await old.ehlo()
        await old.mail("alice@example.org")  # the session has taken generation 1
        write(conf, "members.yaml", members(["alice@example.org", "bob@example.net"], address="team@example.org"))
        await wait_for(lambda: engine.snapshot.generation == 2, timeout=10)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send(engine.port, "members@example.org")  # a new session: the old address is gone
        await old.rcpt("members@example.org")  # the old session still has it
        reply = await old.data(post("alice@example.org", "members@example.org", "in flight"))
        assert reply.code == 250
    errors, reply = await send(engine.port, "team@example.org")
    assert reply.startswith("2.0.0 Queued")
    await wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) == 4, timeout=10)


async def test_deletions_only_with_prune(tmp_path, conf, engine_for, store_url):
    write(conf, "other.yaml", OTHER)
    engine = await engine_for(conf, reload=follow(conf))
    await watching(engine, conf)
    before = engine.follower.reloads
    (conf / "other.yaml").unlink()
    await wait_for(lambda: engine.follower.reloads > before, timeout=10)  # a reload ran: the deletion is held back
    await asyncio.sleep(0.3)  # and the store's generation stays (the poll would see a new one)
    assert "other@example.org" in engine.snapshot.lists and engine.snapshot.generation == 1
    pruning = await engine_for(conf, reload=follow(conf, prune=True))
    await watching(pruning, conf)
    await wait_for(lambda: "other@example.org" not in engine.snapshot.lists, timeout=10)
    assert "other@example.org" not in pruning.snapshot.lists


async def test_an_engine_follows_the_store_when_another_node_reloads(tmp_path, conf, engine_for):
    watcher = await engine_for(conf, reload=follow(conf))
    other = await engine_for(conf, reload=ReloadOptions(poll_interval=0.2))  # no files: another node
    await watching(watcher, conf)
    write(conf, "other.yaml", OTHER)
    await wait_for(lambda: watcher.snapshot.generation == 2, timeout=10)
    seen = time.monotonic()
    await wait_for(lambda: other.snapshot.generation == 2, timeout=5)
    assert time.monotonic() - seen < 3  # polled every 0.2 s here (1 s by default)
    errors, reply = await send(other.port, "other@example.org")
    assert reply.startswith("2.0.0 Queued")
    with other.store.engine.connect() as conn:
        status = read_status(conn, other.store.now())
    assert sorted(n.generation for n in status.nodes) == [2, 2]


async def test_an_engine_follows_a_reconcile_run_from_ci(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf, reload=follow(conf, watch=False))
    write(conf, "other.yaml", OTHER)
    await asyncio.sleep(0.5)
    assert engine.snapshot.generation == 1  # not watching
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "listkeeper", "reconcile", str(conf)], capture_output=True, text=True,
        env={**os.environ, "LISTKEEPER_STORE": store_url})
    assert done.returncode == 0, done.stderr
    await wait_for(lambda: engine.snapshot.generation == 2, timeout=5)
    assert "other@example.org" in engine.snapshot.lists
    with engine.store.engine.connect() as conn:
        status = read_status(conn, engine.store.now())
    assert (status.applied.origin.origin, status.applied.origin.trigger) == ("reconcile", "cli")


async def test_twenty_reloads_while_clients_post_lose_nothing(tmp_path, conf, engine_for, store_url):
    """Clients post without pause (new sessions, and one long session) while the subscribers change 20 times:
    no session fails, and each post goes to exactly the subscribers of the generation it was accepted at."""
    engine = await engine_for(conf, reload=follow(conf))
    await watching(engine, conf)
    base = ["alice@example.org", "bob@example.net"]
    expected = {1: set(base)}
    accepted: list[int] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def short_sessions(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                errors, reply = await send(engine.port, subject=f"s{n}-{i}")
                accepted.append(int(reply.rsplit(" ", 1)[1]))
            except Exception as exc:  # noqa: BLE001 - every failure is a test failure, collected
                failures.append(f"short {n}/{i}: {exc!r}")

    async def long_session() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    errors, reply = await client.sendmail("alice@example.org", ["members@example.org"],
                                                          post("alice@example.org", "members@example.org", f"l{i}"))
                    accepted.append(int(reply.rsplit(" ", 1)[1]))
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"long {i}: {exc!r}")
                await asyncio.sleep(0.01)

    clients = [asyncio.create_task(short_sessions(n)) for n in range(4)] + [asyncio.create_task(long_session())]
    for k in range(1, 21):
        subscribers = base + [f"r{k}@example.com", f"s{k % 3}@example.com"]
        write(conf, "members.yaml", members(subscribers))
        generation = k + 1
        await wait_for(lambda: engine.snapshot.generation == generation, timeout=10)
        expected[generation] = set(subscribers)
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
    assert failures == []
    assert len(accepted) > 40

    def settled():
        (pending,) = db(store_url).execute(
            "select count(*) from deliveries where state not in ('delivered', 'failed')").fetchone()
        return pending == 0
    await wait_for(settled, timeout=60)
    conn = db(store_url)
    generations = set()
    for inbound in accepted:
        (post_id, generation), = conn.execute(
            "select id, generation from messages where parent_id = ? and kind = 'post'", (inbound,)).fetchall()
        rows = conn.execute("select recipient, state from deliveries where message_id = ?", (post_id,)).fetchall()
        assert {r for r, _ in rows} == expected[generation], (inbound, generation)
        assert {s for _, s in rows} == {"delivered"}
        generations.add(generation)
    assert len(generations) >= 10  # the posts really spread over the reloads
    (delivered,) = conn.execute("select count(*) from deliveries").fetchone()
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == delivered


def test_the_watch_filter_takes_manifests_and_leaves_editor_files(tmp_path):
    folder, single = tmp_path / "lists.d", tmp_path / "routes.yaml"
    f = WatchFilter([folder], [single])
    assert f(Change.modified, str(folder / "members.yaml"))
    assert f(Change.added, str(folder / "sub" / "x.yaml"))
    assert f(Change.modified, str(single))
    assert not f(Change.modified, str(folder / ".members.yaml.swp"))
    assert not f(Change.modified, str(folder / "members.yaml~"))
    assert not f(Change.modified, str(folder / ".git" / "index"))
    assert not f(Change.modified, str(tmp_path / "other.yaml"))
    assert not f(Change.modified, str(tmp_path / "lists.d-old" / "x.yaml"))
