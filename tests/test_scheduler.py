"""The delivery scheduler over real SMTP on loopback: limits, pace, retries, VERP, reports, suppression."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from email import message_from_bytes

import pytest

from .conftest import DOMAIN, tagged_verp, wait_for, write
from .smtpsink import free_port, start_sink
from .test_serve import send


def config(tmp_path, relay_port: int, subscribers: list[str], delivery: str = "", extra: str = "",
           relays: str = "", route: str = "      relay: smarthost\n"):
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    subs = "\n".join(f"    - address: {a}" for a in subscribers)
    write(folder, "list.yaml", f"""
apiVersion: listkeeper/v1
kind: MailingList
metadata: {{name: members}}
spec:
  address: members@example.org
  type: discussion
  subscribers:
    - address: poster@example.org
      roles: [poster]
{subs}
""")
    write(folder, "routes.yaml", f"""
apiVersion: listkeeper/v1
kind: Relay
metadata: {{name: smarthost}}
spec: {{host: 127.0.0.1, port: {relay_port}, tls: none, timeout: 5}}
---
{relays}apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "example.org"
      transport: pickup
      folder: {tmp_path / "local"}
    - match: "*"
      transport: relay
{route}  delivery:
{delivery or "    max_connections: 5"}
""")
    if extra:
        write(folder, "extra.yaml", extra)
    return folder


async def post(engine, subject="Hello"):
    data = f"From: poster@example.org\r\nTo: members@example.org\r\nSubject: {subject}\r\n\r\nBody\r\n".encode()
    await send(engine.port, "poster@example.org", ["members@example.org"], data)


@pytest.fixture
def sink():
    sink, controller = start_sink()
    sink.port = controller.port
    yield sink
    controller.stop()


def states(store_url) -> dict[str, str]:
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    rows = dict(db.execute("select recipient, state from deliveries where recipient not like '%example.org'"))
    db.close()
    return rows


async def test_several_messages_per_connection_and_per_destination_limit(tmp_path, sink, engine_for):
    people = [f"user{i}@example.net" for i in range(30)]
    engine = await engine_for(config(tmp_path, sink.port, people, delivery=(
        "    max_connections: 10\n    per_destination: 3\n    messages_per_connection: 5")))
    await post(engine)
    await wait_for(lambda: len(sink.received) == 30)
    assert sink.rcpts() == sorted(people)
    assert sink.peak <= 3
    assert 6 <= sink.connections <= 8  # 30 messages, 5 per connection, 3 connections at a time


async def test_verp_return_path_names_each_subscriber(tmp_path, sink, engine_for):
    engine = await engine_for(config(tmp_path, sink.port, ["alice@example.net", "bob@example.com"]))
    await post(engine)
    await wait_for(lambda: len(sink.received) == 2)
    alice = tagged_verp(engine.store, "alice@example.net")
    assert {r.rcpts[0]: r.mail_from for r in sink.received} == {
        "alice@example.net": alice, "bob@example.com": tagged_verp(engine.store, "bob@example.com")}
    assert alice.startswith("members-bounces+alice=example.net+") and alice.endswith("@example.org")


async def test_throttle_pauses_after_n_messages(tmp_path, sink, engine_for):
    people = [f"user{i}@example.net" for i in range(4)]
    engine = await engine_for(config(tmp_path, sink.port, people, delivery=(
        "    max_connections: 1\n    throttle: {messages: 2, pause: 0.6s}")))
    await post(engine)
    await wait_for(lambda: len(sink.received) == 4)
    times = [r.at for r in sink.received]
    assert times[2] - times[1] >= 0.5  # the pause came after the second message
    assert times[1] - times[0] < 0.5


async def test_run_limit_leaves_the_rest_queued_for_the_next_run(tmp_path, sink, engine_for, store_url):
    people = [f"user{i}@example.net" for i in range(6)]
    engine = await engine_for(config(tmp_path, sink.port, people, delivery=(
        "    max_connections: 2\n    run_limit: 4\n    run_interval: 1.5s")))
    await post(engine)
    await wait_for(lambda: len(sink.received) >= 4)
    await asyncio.sleep(0.5)
    assert len(sink.received) == 4
    assert sorted(states(store_url).values()).count("queued") == 2
    await wait_for(lambda: len(sink.received) == 6, timeout=10)


async def test_delay_before_connecting_to_a_smart_host(tmp_path, sink, engine_for):
    engine = await engine_for(config(tmp_path, sink.port, ["a@example.net"], delivery=(
        "    smarthost_delay: 0.7s")))
    started = time.monotonic()
    await post(engine)
    await wait_for(lambda: sink.received)
    assert sink.connected_at[0] - started >= 0.6


async def test_fallback_relay_is_used_when_the_first_is_down(tmp_path, sink, engine_for):
    dead = free_port()
    backup = ("apiVersion: listkeeper/v1\nkind: Relay\nmetadata: {name: backup}\n"
              f"spec: {{host: 127.0.0.1, port: {sink.port}, tls: none, timeout: 5}}\n---\n")
    folder = config(tmp_path, dead, ["a@example.net"], relays=backup,
                    route="      relay: smarthost\n      fallback: [backup]\n")
    engine = await engine_for(folder)
    await post(engine)
    await wait_for(lambda: sink.received)
    assert sink.rcpts() == ["a@example.net"]


async def test_4xx_is_deferred_with_backoff_and_5xx_fails_with_a_report(tmp_path, sink, engine_for, store_url):
    engine = await engine_for(config(tmp_path, sink.port, ["ok@example.net", "temp@example.net",
                                                            "perm@example.net"]))
    await post(engine, "Report me")
    await wait_for(lambda: states(store_url) == {"ok@example.net": "delivered", "temp@example.net": "deferred",
                                                 "perm@example.net": "failed"})
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    (next_at, created, error), = db.execute(
        "select next_attempt_at, created_at, last_error from deliveries where recipient='temp@example.net'")
    assert 290 <= next_at - created <= 320  # Postfix's first retry: 5 minutes
    assert "451 4.3.0" in error

    def bounce():  # the report went to the VERP address, which is ours: recorded as a bounce for perm@
        return db.execute("select reason, data from messages where kind='post' and state='bounce'").fetchall()

    (reason, data), = await wait_for(bounce)
    assert reason == "bounce for perm@example.net: kept for bounce processing"
    report = message_from_bytes(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    notice = await wait_for(lambda: list((tmp_path / "local").glob("*postmaster*")))
    assert b"perm@example.net" in notice[0].read_bytes()
    db.close()


async def test_suppressed_recipients_are_never_sent_to(tmp_path, sink, engine_for, store_url):
    suppression = ("apiVersion: listkeeper/v1\nkind: SuppressionList\nmetadata: {name: blocked}\n"
                   "spec: {addresses: [no@example.net], domains: ['*.blocked.test']}\n")
    folder = config(tmp_path, sink.port, ["ok@example.net", "no@example.net", "x@mail.blocked.test",
                                          "later@example.net"], extra=suppression)
    from listkeeper.store import suppressions
    from listkeeper.store import Store
    store = Store.open(store_url)
    with store.engine.begin() as conn:
        suppressions.add(conn, "Later@example.net", "complained", store.now())
    store.close()
    engine = await engine_for(folder)
    await post(engine)
    await wait_for(lambda: len([s for s in states(store_url).values() if s != "queued" and s != "sending"]) == 4)
    assert states(store_url) == {"ok@example.net": "delivered", "no@example.net": "suppressed",
                                 "x@mail.blocked.test": "suppressed", "later@example.net": "suppressed"}
    assert sink.rcpts() == ["ok@example.net"]


async def test_global_connection_limit_spans_destinations(tmp_path, sink, engine_for):
    second = ("apiVersion: listkeeper/v1\nkind: Relay\nmetadata: {name: second}\n"
              f"spec: {{host: 127.0.0.1, port: {sink.port}, tls: none, timeout: 5}}\n---\n")
    folder = config(tmp_path, sink.port, [f"u{i}@a.example.net" for i in range(12)]
                    + [f"u{i}@b.example.com" for i in range(12)], relays=second,
                    delivery="    max_connections: 2\n    per_destination: 3\n    messages_per_connection: 2")
    routes = (folder / "routes.yaml").read_text().replace(
        '    - match: "*"\n', '    - match: "*.example.com"\n      transport: relay\n      relay: second\n'
                             '    - match: "*"\n')
    (folder / "routes.yaml").write_text(routes)
    engine = await engine_for(folder)
    await post(engine)
    await wait_for(lambda: len(sink.received) == 24)
    assert sink.peak <= 2  # two destinations of three connections each, but two in all
