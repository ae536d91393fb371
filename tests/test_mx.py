"""MX lookups and direct delivery against a real name server and a real SMTP sink on loopback."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.rcode
import dns.rdata
import dns.rrset
import pytest
from aiosmtpd.controller import Controller

from listkeeper.delivery.lifecycle import Event
from listkeeper.delivery.mx import connect_mx
from listkeeper.delivery.resolver import Answer, Failure, MxResolver, Status, hosts_from_mx, interpret, ip_literal
from listkeeper.delivery.transports import Job, Result, SmtpConnection

from .dnsserver import ZoneServer, closed_udp_port

ZONE = {
    "example.test": [("MX", 20, "mx2.example.test"), ("MX", 10, "mx1.example.test")],
    "mx1.example.test": [("A", "127.0.0.2")],
    "mx2.example.test": [("A", "127.0.0.3")],
    "ties.test": [("MX", 20, "c.ties.test"), ("MX", 10, "b.ties.test"), ("MX", 10, "a.ties.test")],
    "nomx.test": [("A", "127.0.0.3")],
    "nullmx.test": [("MX", 0, ".")],
    "dual.test": [("AAAA", "::1"), ("A", "127.0.0.4")],
    "alias.test": [("CNAME", "mx1.example.test")],
    "big.test": [("MX", 10, "mx1.example.test")],
}


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def zone():
    with ZoneServer(ZONE, ttl=60, truncate={"big.test"}) as server:
        yield server


def resolver_for(*servers, clock=None, timeout=1.0, avoid=60.0) -> MxResolver:
    addresses = [s.address if isinstance(s, ZoneServer) else s for s in servers]
    return MxResolver(addresses, timeout=timeout, avoid_failing_for=avoid, clock=clock or time.monotonic)


# -- pure decisions ------------------------------------------------------------------------------


def mx_answer(*rows: tuple[int, str]) -> Answer:
    return Answer(Status.records, tuple(dns.rdata.from_text("IN", "MX", f"{p} {h}") for p, h in rows), 60)


@pytest.mark.parametrize("answer, expected", [
    (mx_answer((20, "b.test."), (10, "a.test.")), ["a.test", "b.test"]),
    (mx_answer((10, "B.test."), (10, "a.test."), (5, "c.test.")), ["c.test", "b.test", "a.test"]),
    (mx_answer((10, "a.test."), (20, "a.test.")), ["a.test"]),
    (Answer(Status.nodata, (), 60), ["d.test"]),
])
def test_hosts_from_mx(answer, expected):
    assert hosts_from_mx("d.test", answer) == expected


@pytest.mark.parametrize("answer, event, code", [
    (mx_answer((0, ".")), Event.permanent, "556 5.1.10"),
    (Answer(Status.nxdomain, (), 60), Event.permanent, "550 5.1.2"),
])
def test_hosts_from_mx_final_failures(answer, event, code):
    result = hosts_from_mx("d.test", answer)
    assert isinstance(result, Result) and result.event is event and result.detail.startswith(code)


@pytest.mark.parametrize("host, expected", [
    ("192.0.2.1", "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"), ("[IPv6:2001:db8::1]", "2001:db8::1"),
    ("::1", "::1"), ("mx.example.org", None), ("[mx.example.org]", None),
])
def test_ip_literal(host, expected):
    assert ip_literal(host) == expected


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR])
def test_interpret_server_trouble_is_a_failure(rcode):
    response = dns.message.make_response(dns.message.make_query("x.test", "MX"))
    response.set_rcode(rcode)
    assert isinstance(interpret(response), Failure)


def test_interpret_caps_negative_ttl():
    response = dns.message.make_response(dns.message.make_query("x.test", "MX"))
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(dns.rrset.from_text("test.", 86400, "IN", "SOA", "ns.test. h.test. 1 2 3 4 86400"))
    assert interpret(response) == Answer(Status.nxdomain, (), 300)


# -- lookups against the zone server -------------------------------------------------------------


async def test_mx_hosts_in_preference_order(zone):
    resolver = resolver_for(zone)
    assert await resolver.mx_hosts("example.test") == ["mx1.example.test", "mx2.example.test"]
    assert await resolver.mx_hosts("ties.test") == ["b.ties.test", "a.ties.test", "c.ties.test"]


async def test_no_mx_means_the_domain_itself(zone):
    resolver = resolver_for(zone)
    assert await resolver.mx_hosts("nomx.test") == ["nomx.test"]
    assert await resolver.addresses("nomx.test") == ["127.0.0.3"]


async def test_null_mx_is_permanent(zone):
    result = await resolver_for(zone).mx_hosts("nullmx.test")
    assert isinstance(result, Result) and result.event is Event.permanent
    assert result.detail.startswith("556 5.1.10") and "null MX" in result.detail


async def test_nxdomain_is_permanent(zone):
    result = await resolver_for(zone).mx_hosts("nowhere.test")
    assert isinstance(result, Result) and result.event is Event.permanent
    assert result.detail.startswith("550 5.1.2")


@pytest.mark.parametrize("domain", ["", "a..test", "x" * 64 + ".test"])
async def test_invalid_domain_is_permanent_without_asking(zone, domain):
    result = await resolver_for(zone).mx_hosts(domain)
    assert isinstance(result, Result) and result.event is Event.permanent
    assert await resolver_for(zone).addresses(domain) == []
    assert zone.queries == 0


async def test_addresses_a_then_aaaa_and_literals(zone):
    resolver = resolver_for(zone)
    assert await resolver.addresses("dual.test") == ["127.0.0.4", "::1"]
    assert await resolver.addresses("192.0.2.7") == ["192.0.2.7"]
    assert await resolver.addresses("nowhere.test") == []
    assert zone.count("192.0.2.7") == 0


async def test_cname_left_by_the_server_is_followed(zone):
    assert await resolver_for(zone).addresses("alias.test") == ["127.0.0.2"]
    assert zone.count("mx1.example.test", "A") == 1


async def test_truncated_answer_is_asked_again_over_tcp(zone):
    assert await resolver_for(zone).mx_hosts("big.test") == ["mx1.example.test"]
    assert [t for n, _, t in zone.log if n == "big.test"] == ["udp", "tcp"]


async def test_answers_are_cached_for_their_ttl(zone):
    clock = Clock()
    resolver = resolver_for(zone, clock=clock)
    for _ in range(3):
        assert await resolver.mx_hosts("example.test") == ["mx1.example.test", "mx2.example.test"]
    assert zone.count("example.test", "MX") == 1
    clock.now += 59
    await resolver.mx_hosts("example.test")
    assert zone.count("example.test", "MX") == 1
    clock.now += 2
    await resolver.mx_hosts("example.test")
    assert zone.count("example.test", "MX") == 2


@pytest.mark.parametrize("negative_ttl, kept", [(30, 30), (3600, 300)])
async def test_negative_answers_are_cached_for_the_soa_minimum_capped(negative_ttl, kept):
    clock = Clock()
    with ZoneServer(ZONE, ttl=60, negative_ttl=negative_ttl) as zone:
        resolver = resolver_for(zone, clock=clock)
        for name in ("nowhere.test", "nomx.test"):  # NXDOMAIN, NODATA
            await resolver.mx_hosts(name)
            clock.now += kept - 1
            await resolver.mx_hosts(name)
            assert zone.count(name, "MX") == 1
            clock.now += 2
            await resolver.mx_hosts(name)
            assert zone.count(name, "MX") == 2


async def test_dead_first_server_is_avoided_then_retried(zone):
    clock = Clock()
    with ZoneServer({}, fail={"*": "drop"}) as dead:
        resolver = resolver_for(dead, zone, clock=clock, timeout=0.3, avoid=60)
        started = time.monotonic()
        assert await resolver.mx_hosts("example.test") == ["mx1.example.test", "mx2.example.test"]
        assert time.monotonic() - started >= 0.3  # it waited for the dead one once
        assert dead.queries == 1
        assert resolver.stats == {f"127.0.0.1:{dead.port}": {"lookups": 1, "failures": 1},
                                  f"127.0.0.1:{zone.port}": {"lookups": 1, "failures": 0}}

        started = time.monotonic()
        assert await resolver.addresses("mx1.example.test") == ["127.0.0.2"]
        assert time.monotonic() - started < 0.25  # no second timeout
        assert dead.queries == 1

        clock.now += 61
        assert await resolver.mx_hosts("ties.test")
        assert dead.queries == 2
        assert resolver.stats[f"127.0.0.1:{dead.port}"] == {"lookups": 2, "failures": 2}


async def test_refused_and_servfail_servers_count_as_failing(zone):
    with ZoneServer(ZONE, fail={"*": "servfail"}) as broken:
        refused = ("127.0.0.1", closed_udp_port())
        resolver = resolver_for(refused, broken, zone, timeout=5.0)
        started = time.monotonic()
        assert await resolver.mx_hosts("example.test") == ["mx1.example.test", "mx2.example.test"]
        assert time.monotonic() - started < 2.5  # a closed port is refused at once, not waited for
        stats = resolver.stats
        assert stats[f"127.0.0.1:{refused[1]}"]["failures"] == 1
        assert stats[f"127.0.0.1:{broken.port}"] == {"lookups": 1, "failures": 1}


async def test_all_servers_failing_is_temporary_and_they_are_asked_again():
    clock = Clock()
    with ZoneServer(ZONE, fail={"*": "servfail"}) as one, ZoneServer(ZONE, fail={"*": "servfail"}) as two:
        resolver = resolver_for(one, two, clock=clock)
        result = await resolver.mx_hosts("example.test")
        assert isinstance(result, Result) and result.event is Event.temporary
        assert "SERVFAIL" in result.detail
        one.fail.clear()  # recovered, though still being avoided: with everyone avoided, ask anyway
        assert await resolver.mx_hosts("example.test") == ["mx1.example.test", "mx2.example.test"]
        assert (one.queries, two.queries) == (2, 1)


# -- direct delivery -----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def sink(request):
    """A recording SMTP server on the loopback address given by the test's parameter."""
    recorder = Recorder()
    controller = Controller(recorder, hostname=request.param, port=free_port(request.param))
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


JOB = Job(1, "user@example.test", "bounces@example.org", b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n")


@pytest.mark.parametrize("sink, host", [("127.0.0.2", "mx1.example.test"), ("127.0.0.3", "mx2.example.test")],
                         indirect=["sink"])
async def test_connect_mx_delivers_to_the_first_mx_that_answers(zone, sink, host):
    controller, recorder = sink
    conn = await connect_mx("example.test", resolver_for(zone), port=controller.port, timeout=5,
                            helo_name="lists.example.org")
    assert isinstance(conn, SmtpConnection), conn
    try:
        assert conn.where == f"{host}:{controller.port}"
        result = await conn.send(JOB)
    finally:
        await conn.close()
    assert result.event is Event.delivered, result
    [(mail_from, rcpts, content)] = recorder.envelopes
    assert (mail_from, rcpts) == ("bounces@example.org", ["user@example.test"])
    assert content.endswith(b"Subject: x\r\n\r\nbody\r\n")


async def test_connect_mx_passes_on_permanent_lookup_failures(zone):
    result = await connect_mx("nullmx.test", resolver_for(zone), port=free_port("127.0.0.1"), timeout=5,
                              helo_name="lists.example.org")
    assert isinstance(result, Result) and result.event is Event.permanent


async def test_connect_mx_with_no_host_listening_is_temporary(zone):
    port = free_port("127.0.0.1")
    result = await connect_mx("example.test", resolver_for(zone), port=port, timeout=5,
                              helo_name="lists.example.org")
    assert isinstance(result, Result) and result.event is Event.temporary
    assert f"mx2.example.test:{port}" in result.detail  # the last one tried


async def test_at_most_five_addresses_are_tried():
    from listkeeper.delivery.mx import MAX_ADDRESSES, mx_targets
    records = {"many.test": [("MX", 10 + i, f"mx{i}.many.test") for i in range(8)]}
    records.update({f"mx{i}.many.test": [("A", f"127.0.1.{i + 1}")] for i in range(8)})
    with ZoneServer(records) as zone:
        resolver = MxResolver([("127.0.0.1", zone.port)], timeout=2)
        targets = await mx_targets("many.test", resolver)
    assert MAX_ADDRESSES == 5
    assert [host for host, _ in targets] == [f"mx{i}.many.test" for i in range(5)]
