"""A relay route hands mail to a real SMTP server on loopback (aiosmtpd), with SMTP AUTH from a secret."""

from __future__ import annotations

import socket
import sqlite3
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from .conftest import DOMAIN, tagged_verp, wait_for, write
from .test_serve import send

SUBSCRIBERS = [f"user{i}@example.{tld}" for i in range(6) for tld in ("net", "com")]
BODY = "Line 1\r\n\r\n  indented line with trailing space \r\nÜmlaut? no: plain ASCII only.\r\n..leading dot\r\n"


class Sink:
    """The relay: records every envelope it accepts."""

    def __init__(self):
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def relay():
    sink = Sink()
    logins: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        ok = auth_data.password == b"s3cret-from-env"
        return AuthResult(success=ok, handled=False)

    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), server_hostname="relay.test",
                            authenticator=authenticator, auth_require_tls=False)
    controller.start()
    sink.port = controller.port
    sink.logins = logins
    yield sink
    controller.stop()


def conf_with_relay(tmp_path, port: int, auth: bool = False):
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    subs = "\n".join(f"    - address: {a}" for a in SUBSCRIBERS)
    write(folder, "list.yaml", f"""
apiVersion: listkeeper/v1
kind: MailingList
metadata: {{name: members}}
spec:
  address: members@example.org
  type: discussion
  subscribers:
{subs}
""")
    auth_block = "  auth:\n    username: lists@example.org\n    password: {env: LK_TEST_RELAY_PASSWORD}\n" if auth else ""
    write(folder, "routes.yaml", f"""
apiVersion: listkeeper/v1
kind: Relay
metadata: {{name: smarthost}}
spec:
  host: 127.0.0.1
  port: {port}
  tls: none
{auth_block}---
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "*"
      transport: relay
      relay: smarthost
""")
    return folder


async def post(engine):
    data = (f"From: user0@example.net\r\nTo: members@example.org\r\nSubject: Relay test\r\n\r\n{BODY}").encode()
    await send(engine.port, "user0@example.net", ["members@example.org"], data)


async def test_every_subscriber_gets_one_identical_copy_through_the_relay(tmp_path, relay, engine_for):
    engine = await engine_for(conf_with_relay(tmp_path, relay.port))
    await post(engine)
    await wait_for(lambda: len(relay.received) == len(SUBSCRIBERS))
    rcpts = sorted(r for _, rs, _ in relay.received for r in rs)
    assert rcpts == sorted(SUBSCRIBERS)
    bodies = {data.split(b"\r\n\r\n", 1)[1] for _, _, data in relay.received}
    assert bodies == {BODY.encode()}
    assert {mail_from for mail_from, _, _ in relay.received} == {
        tagged_verp(engine.store, r) for r in SUBSCRIBERS}  # VERP, tagged
    assert message_from_bytes(relay.received[0][2])["List-Id"] == "<members.example.org>"


async def test_relay_login_with_a_secret_from_the_environment(tmp_path, relay, engine_for, monkeypatch):
    monkeypatch.setenv("LK_TEST_RELAY_PASSWORD", "s3cret-from-env")
    engine = await engine_for(conf_with_relay(tmp_path, relay.port, auth=True))
    await post(engine)
    await wait_for(lambda: len(relay.received) == len(SUBSCRIBERS))
    assert set(relay.logins) == {("lists@example.org", "s3cret-from-env")}


async def test_failed_login_is_reported_and_retried_later(tmp_path, relay, engine_for, monkeypatch, store_url):
    monkeypatch.setenv("LK_TEST_RELAY_PASSWORD", "wrong-password")
    engine = await engine_for(conf_with_relay(tmp_path, relay.port, auth=True))
    await post(engine)
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))

    def deferred():
        return db.execute("select state, last_error from deliveries where state='deferred'").fetchall()

    rows = await wait_for(lambda: len(deferred()) == len(SUBSCRIBERS) and deferred())
    assert all("login failed: 535" in error for _, error in rows)
    assert all("wrong-password" not in error for _, error in rows)
    assert relay.received == []
    db.close()
