"""/metrics and /healthz end to end: a real engine on loopback, real SMTP clients, a real name server, a
pickup folder, a dead relay; the endpoints read with a real HTTP client and the Prometheus text parser."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from listkeeper.engine.metrics import destination_label
from listkeeper.engine.server import ServeOptions, start_engine

from .conftest import DOMAIN, pickup_routes, reconcile_folder, wait_for, write
from .dnsserver import ZoneServer
from .test_notify_engine import notification
from .test_relay import free_port
from .test_reload import follow, members, watching
from .test_serve import message, send
from .test_store import PG_ADMIN, postgres_available

LIST = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  non_members: reject
  dmarc: munge
  events:
    - name: ping
  subscribers:
    - address: alice@example.org
    - address: bob@example.net
    - address: carol@nowhere.test
    - address: dave@dead.test
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: board}
spec:
  address: board@example.org
  type: moderated
  subscribers:
    - address: alice@example.org
    - {address: chair@example.org, roles: [moderator]}
---
apiVersion: listkeeper/v1
kind: Barring
metadata: {name: spam}
spec:
  senders: ["spam*@bad.example"]
"""


def routes(outbox: Path, dead_port: int, dns_port: int) -> str:
    return f"""
apiVersion: listkeeper/v1
kind: Relay
metadata: {{name: dead}}
spec: {{host: 127.0.0.1, port: {dead_port}, tls: none, timeout: 5s}}
---
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - {{match: nowhere.test, transport: mx}}
    - {{match: dead.test, transport: relay, relay: dead}}
    - {{match: "*", transport: pickup, folder: {outbox}}}
  dns:
    nameservers: [{{address: 127.0.0.1, port: {dns_port}}}]
    timeout: 2s
"""


Samples = dict[tuple[str, frozenset], float]


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(engine) -> Samples:
    status, content_type, body = await get(f"{engine.web.url}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def outbox(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "outbox"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


@pytest.mark.parametrize("transport, label", [
    ("relay:smarthost", "relay:smarthost"), ("mx:example.com", "mx"), ("pickup:/var/out", "pickup"),
    ("pickup", "pickup"), ("discard", "discard"), ("none", "none"), ("suppressed", "suppressed"),
])
def test_destination_labels_never_carry_a_domain_or_a_folder(transport, label):
    assert destination_label(transport) == label


async def test_the_counters_follow_posts_deliveries_dns_events_and_notifications(tmp_path, engine_for):
    log_file = tmp_path / "barred.jsonl"
    zone = ZoneServer({"_dmarc.strict.test": [("TXT", '"v=DMARC1; p=reject"')]}, fail={"_dmarc.broken.test": "servfail"})
    with zone:
        conf = tmp_path / "conf"
        write(conf, "domain.yaml", DOMAIN)
        write(conf, "lists.yaml", LIST)
        write(conf, "routes.yaml", routes(tmp_path / "outbox", free_port(), zone.port))
        write(conf, "notify.yaml", notification("barred", "message.barred", f"""
    - type: log
      path: {log_file}""", "  max_frequency: {every: 15m}"))
        engine = await engine_for(conf)
        codes: list[int] = []

        errors, reply = await send(engine.port, "alice@example.org", ["members@example.org"],
                                   message("Alice <alice@example.org>", "members@example.org", "Hello"))
        assert errors == {} and reply.startswith("2.0.0 Queued")
        errors, reply = await send(engine.port, "alice@example.org", ["board@example.org"],
                                   message("alice@example.org", "board@example.org", "For the board"))
        assert errors == {} and "held for moderation" in reply
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:  # a non-member: the list rejects it
            await send(engine.port, "x@broken.test", ["members@example.org"],
                       message("x@broken.test", "members@example.org", "Buy"))
        codes.append(refused.value.code)
        for _ in range(2):  # barred at MAIL; the notification runs once, then max_frequency holds it back
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as barred:
                await send(engine.port, "spam@bad.example", ["members@example.org"],
                           message("spam@bad.example", "members@example.org", "Spam"))
            codes.append(barred.value.code)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as unknown:
            await send(engine.port, "alice@example.org", ["nobody@example.org"],
                       message("alice@example.org", "nobody@example.org", "Hi"))
        codes.append(unknown.value.recipients[0].code)
        errors, reply = await send(engine.port, "alice@example.org", ["members-request@example.org"],
                                   message("alice@example.org", "members-request@example.org", "cmd", "event ping\r\n"))
        assert errors == {}

        def settled():  # 2 copies of the post, the moderation notice, the reply, the notice about carol
            with engine.store.engine.connect() as conn:
                states = dict(conn.execute(text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())
            return states if not states.get("queued") and not states.get("sending") and len(outbox(tmp_path)) >= 5 \
                and engine.metrics.registry.get_sample_value("listkeeper_smtp_sessions_active") == 0 else None

        await wait_for(settled, timeout=20)
        status, _, body = await get(f"{engine.web.url}/healthz")  # its probe is no session of the counters
        assert (status, body) == (200, "ok\n")
        samples = await scrape(engine)

    assert value(samples, "listkeeper_smtp_sessions_total") == 7
    assert value(samples, "listkeeper_smtp_sessions_active") == 0
    assert value(samples, "listkeeper_smtp_replies_total", code="220") == 7
    assert value(samples, "listkeeper_smtp_replies_total", code="250") >= 10
    for code in set(codes):
        assert value(samples, "listkeeper_smtp_replies_total", code=str(code)) == codes.count(code), code
    assert value(samples, "listkeeper_posts_total", list="members", verdict="accept") == 1
    assert value(samples, "listkeeper_posts_total", list="members", verdict="reject") == 1
    assert value(samples, "listkeeper_posts_total", list="board", verdict="hold") == 1
    delivered = len(outbox(tmp_path))
    assert value(samples, "listkeeper_deliveries_total", outcome="delivered", destination="pickup") == delivered
    assert value(samples, "listkeeper_deliveries_total", outcome="failed", destination="mx") == 1  # NXDOMAIN
    assert value(samples, "listkeeper_deliveries_total", outcome="deferred", destination="relay:dead") == 1
    assert value(samples, "listkeeper_queue_deliveries", state="deferred") == 1  # dave's, waiting to retry
    assert value(samples, "listkeeper_queue_deliveries", state="queued") == 0
    assert value(samples, "listkeeper_queue_deliveries", state="sending") == 0
    assert 0 <= value(samples, "listkeeper_queue_oldest_age_seconds") < 60
    server = f"127.0.0.1:{zone.port}"
    # example.org (cached for the second post), broken.test; board does not mitigate DMARC: no lookup
    assert value(samples, "listkeeper_dns_lookups_total", type="TXT", server=server) == 2
    assert value(samples, "listkeeper_dns_failures_total", type="TXT", server=server) == 1  # SERVFAIL
    assert value(samples, "listkeeper_dns_lookups_total", type="MX", server=server) == 1
    assert value(samples, "listkeeper_dns_failures_total", type="MX", server=server) is None  # NXDOMAIN is an answer
    assert value(samples, "listkeeper_event_fires_total", list="members", event="ping", source="mail") == 1
    assert value(samples, "listkeeper_notifications_total", notification="barred", action="log",
                 outcome="sent") == 1
    # the stranger's rejected post is a refusal too (message.barred): three events, one run, two held back
    assert value(samples, "listkeeper_notifications_suppressed_total", notification="barred") == 2
    assert value(samples, "listkeeper_config_generation") == 1
    assert value(samples, "listkeeper_store_up") == 1


async def test_reloads_are_counted_by_result_and_the_generation_follows(tmp_path, engine_for):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(conf, reload=follow(conf))
    await watching(engine, conf)
    before = await scrape(engine)
    write(conf, "members.yaml", members(["alice@example.org"], kind="discusion"))
    await wait_for(lambda: engine.metrics.registry.get_sample_value("listkeeper_reloads_total",
                                                                    {"result": "rejected"}) == 1)
    write(conf, "members.yaml", members(["alice@example.org", "bob@example.net"]))
    await wait_for(lambda: engine.snapshot.generation == 2)
    after = await scrape(engine)
    assert value(before, "listkeeper_config_generation") == 1
    assert value(after, "listkeeper_config_generation") == 2
    assert value(after, "listkeeper_reloads_total", result="rejected") == 1
    assert value(after, "listkeeper_reloads_total", result="applied") == 1
    assert value(after, "listkeeper_reloads_total", result="unchanged") >= 1  # the first round, the probes


async def test_healthz_is_503_once_the_smtp_listener_is_closed(tmp_path, engine_for):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(conf)
    assert await get(f"{engine.web.url}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert value(await scrape(engine), "listkeeper_smtp_sessions_total") == 0  # the probe was no session
    engine.server.close()
    await engine.server.wait_closed()
    status, _, body = await get(f"{engine.web.url}/healthz")
    assert status == 503 and body.startswith("smtp: ") and "store" not in body


def _pg_refusing(name: str, refuse: bool) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"false" if refuse else "true"}'))
        if refuse:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
    admin.dispose()


async def test_healthz_is_503_while_the_store_is_unreachable_and_200_again_after(tmp_path):
    reason = postgres_available()
    if reason:
        pytest.skip(f"PostgreSQL store test skipped: {reason}")
    name = f"lk_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    store = reconcile_folder(conf, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    engine = await start_engine(store, ServeOptions(port=0, http_port=0))
    try:
        assert (await get(f"{engine.web.url}/healthz"))[0] == 200
        await asyncio.to_thread(_pg_refusing, name, True)
        status, _, body = await get(f"{engine.web.url}/healthz")
        assert status == 503 and body.startswith("store: ") and "smtp" not in body, body
        samples = await scrape(engine)  # the scrape still answers, and says the store is down
        assert value(samples, "listkeeper_store_up") == 0 and value(samples, "listkeeper_config_generation") == 1
        await asyncio.to_thread(_pg_refusing, name, False)
        status, _, body = await get(f"{engine.web.url}/healthz")
        assert (status, body) == (200, "ok\n")
    finally:
        await asyncio.to_thread(_pg_refusing, name, False)
        async with asyncio.timeout(30):
            await engine.stop()
        store.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


async def test_healthz_against_a_hung_store_keeps_one_probe_thread_not_one_per_request(monkeypatch):
    """A store that accepts connections and never answers (a hung server, a half-dead failover): each
    /healthz answers 'no answer' after its timeout, but the blocked probe is not started again per
    request. Otherwise a probe every few seconds fills the engine's worker threads, which the queue's
    claims, lease renewals and the leader check share, and they stay blocked after the store returns."""
    import socket
    import threading

    from listkeeper.engine import health
    from listkeeper.store import Store
    from listkeeper.store.database import create_store_engine

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes connections; nothing ever reads or answers them
    store = Store(create_store_engine(f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test"))
    monkeypatch.setattr(health, "TIMEOUT", 0.2)
    try:
        await health.store_problem(store)  # the executor's first thread exists from here on
        before = threading.active_count()
        for _ in range(8):
            assert await health.store_problem(store) == "store: no answer within 0.2 s"
        assert threading.active_count() - before <= 1
    finally:
        silent.close()  # the waiting connections are reset: the blocked probes end
        store.engine.dispose()
