"""8BITMIME and SMTPUTF8: inbound mail with 8-bit bodies and UTF-8 headers is relayed as it is to servers
that announce what it needs, converted to seven bits (and signed after) for those without 8BITMIME, and
refused with 5.6.7 (never sent broken) where SMTPUTF8 is needed but missing."""

from __future__ import annotations

import sqlite3
from email import message_from_bytes
from email.parser import BytesParser
from email.policy import default

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from listkeeper.delivery.downgrade import Needs, needs, seven_bit

from .conftest import wait_for, write
from .dkimkeys import key_record, new_key, verifies
from .dnsserver import ZoneServer
from .smtpsink import free_port
from .test_dkim import domain_yaml

TEXT = "Grüße, Zoë! Ça va? Ελληνικά.\r\n"
EIGHT_BIT = ("From: alice@example.org\r\nTo: talk@example.org\r\nSubject: Umlauts\r\nMIME-Version: 1.0\r\n"
             "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + TEXT).encode()
UTF8_HEADERS = ("From: Zoë <alice@example.org>\r\nTo: talk@example.org\r\nSubject: Grüße\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + TEXT).encode()


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


# --- pure --------------------------------------------------------------------------------------------

def test_what_a_copy_needs():
    assert needs(b"Subject: x\r\n\r\nplain\r\n", "a@b.test", "c@d.test") == Needs(False, False)
    assert needs(EIGHT_BIT, "a@b.test", "c@d.test").eight_bit
    assert not needs(EIGHT_BIT, "a@b.test", "c@d.test").smtputf8
    assert needs(UTF8_HEADERS, "a@b.test", "c@d.test").smtputf8
    assert needs(b"Subject: x\r\n\r\nplain\r\n", "a@b.test", "zoë@d.test").smtputf8


def test_seven_bits_keep_the_text_and_leave_seven_bit_mail_alone():
    plain = b"Subject: x\r\n\r\nplain\r\n"
    assert seven_bit(plain) is plain
    converted = seven_bit(EIGHT_BIT)
    assert converted.isascii()
    mail = BytesParser(policy=default).parsebytes(converted)
    assert mail["Content-Transfer-Encoding"] == "quoted-printable" and lf(mail.get_content()) == lf(TEXT)


def test_seven_bits_reach_inside_multiparts_and_attached_messages():
    inner = EIGHT_BIT.decode()
    data = ("From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
            "\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + TEXT +
            "--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\xff\xfe\r\n"
            "--XX\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + inner +
            "--XX--\r\n").encode("utf-8", "surrogateescape")
    converted = seven_bit(data)
    assert converted.isascii()
    mail = BytesParser(policy=default).parsebytes(converted)
    text, blob, attached = mail.iter_parts()
    assert text.get_content() == TEXT.rstrip("\r\n")  # the last line end belongs to the boundary
    assert blob["Content-Transfer-Encoding"] == "base64" and blob.get_content() == "\xff\xfe".encode("utf-8")
    assert attached["Content-Transfer-Encoding"] == "7bit"
    assert lf(attached.get_content().get_content()) == lf(TEXT).rstrip("\n")


def test_eight_bit_text_without_mime_says_its_charset_is_unknown():
    converted = seven_bit("Subject: x\r\n\r\nGrüße\r\n".encode())
    mail = message_from_bytes(converted)
    assert mail["Content-Type"] == 'text/plain; charset="unknown-8bit"' and mail["MIME-Version"] == "1.0"
    assert lf(mail.get_payload(decode=True).decode()) == "Grüße\n"


# --- end to end --------------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((list(envelope.mail_options), list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"


@pytest.fixture
def servers():
    """A modern server (8BITMIME, SMTPUTF8) and an old one (neither)."""
    modern, old = Recorder(), Recorder()
    started = [Controller(modern, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True),
               Controller(old, hostname="127.0.0.1", port=free_port(), decode_data=True,
                          enable_SMTPUTF8=False)]
    for controller in started:
        controller.start()
    yield (modern, started[0].port), (old, started[1].port)
    for controller in started:
        controller.stop()


@pytest.fixture
def conf(tmp_path, servers):
    key = tmp_path / "keys" / "example.org.pem"
    public = new_key(key)
    (_, modern_port), (_, old_port) = servers
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", domain_yaml(key))
    write(folder, "list.yaml", """
        apiVersion: listkeeper/v1
        kind: MailingList
        metadata: {name: talk}
        spec:
          address: talk@example.org
          type: discussion
          subscribers:
            - address: alice@example.org
            - address: bob@new.test
            - address: carol@old.test
        """)
    write(folder, "routes.yaml", f"""
        apiVersion: listkeeper/v1
        kind: Relay
        metadata: {{name: modern}}
        spec: {{host: 127.0.0.1, port: {modern_port}, tls: none}}
        ---
        apiVersion: listkeeper/v1
        kind: Relay
        metadata: {{name: old}}
        spec: {{host: 127.0.0.1, port: {old_port}, tls: none}}
        ---
        apiVersion: listkeeper/v1
        kind: RoutingTable
        metadata: {{name: default}}
        spec:
          routes:
            - {{match: old.test, transport: relay, relay: old}}
            - {{match: new.test, transport: relay, relay: modern}}
            - {{match: "*", transport: discard}}
        """)
    with ZoneServer({"lk2024._domainkey.example.org": [key_record(public)]}) as zone:
        yield folder, zone


async def test_eight_bit_posts_go_as_they_are_or_in_seven_bits_and_stay_signed(conf, servers, engine_for):
    folder, zone = conf
    (modern, _), (old, _) = servers
    engine = await engine_for(folder)
    await aiosmtplib.send(EIGHT_BIT, sender="alice@example.org", recipients=["talk@example.org"],
                          hostname="127.0.0.1", port=engine.port, start_tls=False)
    await wait_for(lambda: modern.received and old.received)
    options, _, data = modern.received[0]
    assert "BODY=8BITMIME" in options and data.endswith(TEXT.encode())
    assert verifies(data, zone)
    options, _, data = old.received[0]
    data = data if isinstance(data, bytes) else data.encode()
    assert not any("8BITMIME" in o for o in options) and data.isascii()
    assert lf(BytesParser(policy=default).parsebytes(data).get_content()) == lf(TEXT)
    assert verifies(data, zone)  # signed after the conversion


async def test_utf8_headers_need_smtputf8_and_are_refused_cleanly_without_it(conf, servers, engine_for, store_url):
    folder, zone = conf
    (modern, _), (old, _) = servers
    engine = await engine_for(folder)
    await aiosmtplib.send(UTF8_HEADERS, sender="alice@example.org", recipients=["talk@example.org"],
                          hostname="127.0.0.1", port=engine.port, start_tls=False, mail_options=["SMTPUTF8"])
    await wait_for(lambda: modern.received)
    options, _, data = modern.received[0]
    assert "SMTPUTF8" in options and "Subject: Grüße".encode() in data and verifies(data, zone)

    def failed():
        db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            return db.execute("select state, last_error from deliveries where recipient='carol@old.test'").fetchone()
        finally:
            db.close()
    state, detail = await wait_for(lambda: (found := failed()) and found[0] == "failed" and found)
    assert "does not offer SMTPUTF8" in detail and "5.6.7" in detail
    assert old.received == []  # never sent broken
