"""The relay transport over TLS against real aiosmtpd servers on loopback, with a trustme test CA."""

from __future__ import annotations

import asyncio

import pytest

from listkeeper.delivery.lifecycle import Event
from listkeeper.delivery.transports import Job, Result, SmtpConnection, connect_relay
from listkeeper.manifests.routes import RelaySpec

from .tlsfixtures import PASSWORD, USERNAME, make_pki, start_relay

HELO = "lists.example.org"
PASSWORD_ENV = "LK_TLS_TEST_PW"
LIMIT = 20.0  # no single step of a test may wait longer than this


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def relays(pki):
    """start(mode) -> a running relay; every relay started is stopped at teardown."""
    controllers = []

    def start(mode: str):
        relay, controller = start_relay(pki, mode)
        controllers.append(controller)
        return relay

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD


def spec(port: int, tls: str, ca_file: str | None, auth: bool = True) -> RelaySpec:
    return RelaySpec(host="127.0.0.1", port=port, tls=tls, tls_ca_file=ca_file, timeout=5,
                     auth={"username": USERNAME, "password": {"env": PASSWORD_ENV}} if auth else None)


def job(n: int) -> Job:
    data = f"From: members@example.org\r\nTo: user{n}@example.net\r\nSubject: TLS {n}\r\n\r\nBody {n}\r\n"
    return Job(delivery_id=n, recipient=f"user{n}@example.net", return_path="members-bounces@example.org",
               data=data.encode())


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, LIMIT)


async def open_relay(relay_spec: RelaySpec) -> SmtpConnection:
    conn = await bounded(connect_relay(relay_spec, helo_name=HELO))
    assert isinstance(conn, SmtpConnection), conn
    return conn


async def test_starttls_carries_two_messages_over_one_encrypted_authenticated_connection(pki, relays, password):
    relay = relays("starttls")
    conn = await open_relay(spec(relay.port, "starttls", pki.ca_file))
    try:
        results = [await bounded(conn.send(job(1))), await bounded(conn.send(job(2)))]
    finally:
        await bounded(conn.close())
    assert [r.event for r in results] == [Event.delivered, Event.delivered], results
    assert relay.logins and set(relay.logins) == {(USERNAME, PASSWORD)}
    assert [(r.mail_from, r.rcpts) for r in relay.received] == [
        ("members-bounces@example.org", ["user1@example.net"]),
        ("members-bounces@example.org", ["user2@example.net"]),
    ]
    assert b"Subject: TLS 2\r\n" in relay.received[1].data
    assert len({r.peer for r in relay.received}) == 1  # one connection carried both
    assert all(r.after_starttls and r.tls_version and r.tls_version.startswith("TLS") for r in relay.received)


async def test_implicit_tls_delivers(pki, relays, password):
    relay = relays("implicit")
    conn = await open_relay(spec(relay.port, "implicit", pki.ca_file))
    try:
        result = await bounded(conn.send(job(1)))
    finally:
        await bounded(conn.close())
    assert result.event is Event.delivered, result
    assert set(relay.logins) == {(USERNAME, PASSWORD)}
    assert [r.rcpts for r in relay.received] == [["user1@example.net"]]
    assert relay.received[0].tls_version and not relay.received[0].after_starttls  # TLS from the first byte


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_a_certificate_from_an_untrusted_ca_is_a_temporary_failure(pki, relays, password, mode):
    relay = relays(mode)
    result = await bounded(connect_relay(spec(relay.port, mode, pki.other_ca_file), helo_name=HELO))
    assert isinstance(result, Result), result
    assert result.event is Event.temporary
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail, result.detail
    assert f"127.0.0.1:{relay.port}" in result.detail
    assert relay.logins == [] and relay.received == []  # nothing, not even the password, went to that server


async def test_an_unreadable_ca_file_is_a_temporary_failure(tmp_path, password):
    missing = tmp_path / "no-such-ca.pem"
    result = await bounded(connect_relay(spec(1, "starttls", str(missing)), helo_name=HELO))
    assert isinstance(result, Result) and result.event is Event.temporary, result
    assert str(missing) in result.detail


async def test_a_failed_login_is_temporary_and_never_shows_the_password(pki, relays, monkeypatch):
    wrong = "wrong-Pa55word-xyzzy"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    relay = relays("starttls")
    result = await bounded(connect_relay(spec(relay.port, "starttls", pki.ca_file), helo_name=HELO))
    assert isinstance(result, Result), result
    assert result.event is Event.temporary
    assert "login failed: 535" in result.detail, result.detail
    assert wrong not in result.detail and PASSWORD not in result.detail
    assert relay.logins and {login for login, _ in relay.logins} == {USERNAME}
    assert relay.received == []


async def test_sending_in_the_clear_to_a_relay_that_requires_starttls_is_refused(pki, relays):
    relay = relays("starttls")
    conn = await open_relay(spec(relay.port, "none", None, auth=False))
    try:
        result = await bounded(conn.send(job(1)))
    finally:
        await bounded(conn.close())
    assert isinstance(result, Result)
    assert result.event is Event.permanent, result  # 530 is a 5xx reply: the transport's rule for 5xx
    assert ": 530 " in result.detail and "STARTTLS" in result.detail, result.detail
    assert relay.received == []
