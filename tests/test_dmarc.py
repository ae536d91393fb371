"""DMARC mitigation: the poster's policy looked up on a real name server on loopback, posts munged or
wrapped per list, the poster's DKIM signature kept only where it still verifies; pure parts first."""

from __future__ import annotations

import asyncio
import logging
import time
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import default
from pathlib import Path

import aiosmtplib
import dkim
import pytest

from listkeeper.engine.dmarc import PosterPolicy, action, munge, names_to_ask, parse_record, policy_of, wrap
from listkeeper.engine.fanout import list_copy
from listkeeper.engine.headers import RawMessage
from listkeeper.engine.snapshot import ListConfig
from listkeeper.manifests.lists import DmarcMitigation, MailingListSpec

from .conftest import wait_for, write
from .dkimkeys import dnsfunc_for, key_record, new_key, verifies
from .dnsserver import ZoneServer
from .test_dkim import domain_yaml

TALK = ListConfig("talk", MailingListSpec(address="talk@example.org", type="discussion", dmarc="munge"))


def post(sender: str, subject: str = "Hello", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: talk@example.org\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{abs(hash((sender, subject)))}@poster.test>\r\n"
            f"{extra}\r\nHello list.\r\n").encode()


# --- pure --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, for_subdomain, expected", [
    ("v=DMARC1; p=reject", False, "reject"),
    ("v=DMARC1;p=quarantine;rua=mailto:x@y.test", False, "quarantine"),
    ("v=DMARC1; p=none; sp=reject", True, "reject"),
    ("v=DMARC1; p=reject", True, "reject"),  # no sp=: p= applies below too
    ("v=DMARC1; p=reject; sp=none", True, "none"),
    ("v=DMARC1; p=Reject", False, "reject"),
    ("v=DMARC1; p=bogus", False, None),
])
def test_policy_of_a_record(text, for_subdomain, expected):
    assert policy_of(parse_record(text), for_subdomain) == expected


@pytest.mark.parametrize("text", ["v=spf1 -all", "", "p=reject", "v=DMARC2; p=reject"])
def test_other_txt_records_are_not_dmarc(text):
    assert parse_record(text) is None


def test_the_tree_walk_stops_below_the_top_level_domain():
    assert names_to_ask("a.b.example.co.uk") == ["a.b.example.co.uk", "b.example.co.uk", "example.co.uk", "co.uk"]
    assert names_to_ask("example.org") == ["example.org"]
    assert len(names_to_ask(".".join("abcdefghijkl") + ".test")) == 8


@pytest.mark.parametrize("setting, policy, expected", [
    ("none", "reject", None), ("munge", "reject", "munge"), ("munge", "quarantine", "munge"),
    ("munge", "none", None), ("munge", None, None), ("wrap", "reject", "wrap"), ("wrap", "none", None),
    ("always-munge", None, "munge"), ("always-munge", "none", "munge"),
])
def test_what_a_list_does(setting, policy, expected):
    assert action(DmarcMitigation(setting), PosterPolicy("x.test", policy)) == expected


def test_munging_shows_the_poster_via_the_list_and_replies_reach_them():
    out = munge(RawMessage.parse(post('"Zoë Ä." <zoe@strict.test>', extra="Reply-To: team@strict.test\r\n")), TALK)
    mail = message_from_bytes(out.to_bytes(), policy=default)
    assert str(mail["From"]) == '"Zoë Ä. via talk" <talk@example.org>'
    assert out.get("from").isascii()  # RFC 2047 encoded
    assert [a.addr_spec for a in mail["Reply-To"].addresses] == ["team@strict.test", "zoe@strict.test"]
    assert mail.get_content() == "Hello list.\r\n"


def test_munging_without_a_display_name_uses_the_address():
    out = munge(RawMessage.parse(post("alice@strict.test")), TALK)
    assert out.get("from") == '"alice@strict.test via talk" <talk@example.org>'
    assert out.get("reply-to") == "alice@strict.test"


@pytest.fixture(scope="module")
def poster_key(tmp_path_factory):
    """A key for strict.test and the name server publishing it and the DMARC records."""
    folder = tmp_path_factory.mktemp("poster")
    public = new_key(folder / "strict.pem")
    ours = new_key(folder / "example.org.pem")
    zone = {
        "sel._domainkey.strict.test": [key_record(public)],
        "lk2024._domainkey.example.org": [key_record(ours)],
        "_dmarc.strict.test": [("TXT", '"v=DMARC1; p=reject; rua=mailto:d@strict.test"')],
        "_dmarc.soft.test": [("TXT", '"v=DMARC1; p=none"')],
        "_dmarc.corp.test": [("TXT", '"v=DMARC1; p=none; sp=quarantine"')],
        "_dmarc.example.org": [("TXT", '"v=DMARC1; p=reject"')],
        "strict.test": [("A", "127.0.0.9")], "soft.test": [("A", "127.0.0.9")],
    }
    with ZoneServer(zone, ttl=300) as server:
        yield (folder / "strict.pem").read_bytes(), folder / "example.org.pem", server


def signed_post(pem: bytes, sender: str = "Alice <alice@strict.test>", subject: str = "Hello") -> bytes:
    data = post(sender, subject)
    return dkim.sign(data, b"sel", b"strict.test", pem,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + data


def test_wrapping_keeps_the_post_and_its_signature_intact(poster_key):
    original = signed_post(poster_key[0])
    out = wrap(RawMessage.parse(original), TALK, "lists.example.org").to_bytes()
    mail = message_from_bytes(out, policy=default)
    assert mail.get_content_type() == "message/rfc822"
    assert RawMessage.parse(out).get("from") == '"Alice via talk" <talk@example.org>'
    assert str(mail["Reply-To"]) == "Alice <alice@strict.test>"
    assert mail["Subject"] == "Hello" and mail["Message-ID"].endswith("@lists.example.org>")
    assert "DKIM-Signature" not in mail
    assert out.endswith(original)
    assert verifies(original, poster_key[2])


def test_a_poster_signature_survives_a_list_that_changes_nothing_it_covers(poster_key):
    original = signed_post(poster_key[0])
    plain = ListConfig("talk", MailingListSpec(address="talk@example.org", type="discussion"))
    copy = list_copy(RawMessage.parse(original), plain, "lists.example.org", 0.0)
    assert copy.startswith(b"DKIM-Signature:") and verifies(copy, poster_key[2])
    prefixed = ListConfig("talk", MailingListSpec(address="talk@example.org", type="discussion",
                                                  subject_prefix="[talk]"))
    assert b"DKIM-Signature" not in list_copy(RawMessage.parse(original), prefixed, "lists.example.org", 0.0)
    oversigned = dkim.sign(post("alice@strict.test"), b"sel", b"strict.test", poster_key[0],
                           include_headers=[b"from", b"subject", b"list-id"]) + post("alice@strict.test")
    assert b"DKIM-Signature" not in list_copy(RawMessage.parse(oversigned), plain, "lists.example.org", 0.0)
    assert b"DKIM-Signature" not in munge(RawMessage.parse(original), TALK).to_bytes()


# --- end to end: the engine, a real name server ------------------------------------------------------

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: talk}
spec:
  address: talk@example.org
  type: discussion
  dmarc: munge
  subscribers:
    - address: alice@strict.test
    - address: bob@soft.test
    - address: carol@mail.corp.test
    - address: dave@slow.test
    - address: chair@example.org
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: wrapped}
spec:
  address: wrapped@example.org
  type: discussion
  subject_prefix: "[wrapped]"
  dmarc: wrap
  subscribers:
    - address: alice@strict.test
    - address: bob@soft.test
    - address: carol@mail.corp.test
    - address: dave@slow.test
    - address: chair@example.org
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: plain}
spec:
  address: plain@example.org
  type: discussion
  subscribers:
    - address: alice@strict.test
    - address: bob@soft.test
    - address: carol@mail.corp.test
    - address: dave@slow.test
    - address: chair@example.org
"""


def routes(outbox: Path, server: ZoneServer) -> str:
    return f"""
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes: [{{match: "*", transport: pickup, folder: {outbox}}}]
  dns:
    nameservers: [{{address: 127.0.0.1, port: {server.port}}}]
    timeout: 1s
"""


@pytest.fixture
def conf(tmp_path: Path, poster_key) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", domain_yaml(poster_key[1]))
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", routes(tmp_path / "outbox", poster_key[2]))
    poster_key[2].fail = {"_dmarc.slow.test": "drop"}
    poster_key[2].log.clear()
    return folder


def copies(tmp_path: Path, subject: str) -> list[bytes]:
    found = []
    for path in sorted((tmp_path / "outbox").glob("*.eml")) if (tmp_path / "outbox").exists() else []:
        data = path.read_bytes()
        if subject in str(make_header(decode_header(message_from_bytes(data)["Subject"]))):
            found.append(data)
    return found


async def send(port: int, sender: str, to: str, data: bytes):
    return await aiosmtplib.send(data, sender=sender, recipients=[to], hostname="127.0.0.1", port=port,
                                 start_tls=False)


async def test_posts_from_strict_domains_are_munged_and_others_left_alone(tmp_path, conf, poster_key, engine_for):
    engine = await engine_for(conf)
    zone = poster_key[2]
    cases = {"From strict": ("alice@strict.test", "Alice <alice@strict.test>", '"Alice via talk" <talk@example.org>'),
             "From soft": ("bob@soft.test", "Bob <bob@soft.test>", None),
             "From corp": ("carol@mail.corp.test", "carol@mail.corp.test",
                           '"carol@mail.corp.test via talk" <talk@example.org>'),  # sp=quarantine of corp.test
             "From us": ("chair@example.org", "chair@example.org", None)}  # we sign it aligned: no mitigation
    for subject, (sender, from_, _) in cases.items():
        await send(engine.port, sender, "talk@example.org", post(from_, subject))
    for subject, (sender, from_, munged) in cases.items():
        delivered = await wait_for(lambda: len(copies(tmp_path, subject)) == 5 and copies(tmp_path, subject))
        for data in delivered:
            mail = message_from_bytes(data)
            assert mail["From"] == (munged or from_), subject
            assert mail["Reply-To"] == (from_ if munged else None)
            assert verifies(data, zone)  # and our own signature covers the rewritten From
    await send(engine.port, "alice@strict.test", "talk@example.org", post("Alice <alice@strict.test>", "Again"))
    await wait_for(lambda: len(copies(tmp_path, "Again")) == 5)
    assert zone.count("_dmarc.strict.test", "TXT") == 1  # cached for its TTL
    assert zone.count("_dmarc.example.org") == 0


async def test_a_dns_failure_delivers_the_post_as_it_came_without_stalling_others(tmp_path, conf, poster_key,
                                                                                 engine_for, caplog):
    engine = await engine_for(conf)
    caplog.set_level(logging.WARNING, logger="listkeeper.dmarc")
    slow = asyncio.create_task(send(engine.port, "dave@slow.test", "talk@example.org",
                                    post("Dave <dave@slow.test>", "Slow")))
    await wait_for(lambda: poster_key[2].count("_dmarc.slow.test"), timeout=5)
    started = time.monotonic()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False) as other:
        code, _ = await other.noop()
    assert code == 250 and time.monotonic() - started < 0.5  # the lookup does not block the loop
    errors, reply = await asyncio.wait_for(slow, timeout=10)
    assert errors == {} and reply.startswith("2.0.0 Queued")
    delivered = await wait_for(lambda: len(copies(tmp_path, "Slow")) == 5 and copies(tmp_path, "Slow"))
    assert all(message_from_bytes(d)["From"] == "Dave <dave@slow.test>" for d in delivered)
    assert any("_dmarc.slow.test" in r.getMessage() and "as it came" in r.getMessage() for r in caplog.records)


async def test_wrapped_posts_carry_the_original_and_its_valid_signature(tmp_path, conf, poster_key, engine_for):
    engine = await engine_for(conf)
    original = signed_post(poster_key[0], subject="Wrapped")
    await send(engine.port, "alice@strict.test", "wrapped@example.org", original)
    delivered = await wait_for(lambda: len(copies(tmp_path, "Wrapped")) == 5 and copies(tmp_path, "Wrapped"))
    for data in delivered:
        mail = message_from_bytes(data, policy=default)
        assert mail.get_content_type() == "message/rfc822"
        assert message_from_bytes(data)["From"] == '"Alice via wrapped" <wrapped@example.org>'
        assert mail["Subject"] == "[wrapped] Wrapped" and mail["List-Id"] == "<wrapped.example.org>"
        assert verifies(data, poster_key[2])  # ours, on the outside
        inner = data[data.index(b"\r\n\r\n") + 4:]
        assert inner == original and verifies(inner, poster_key[2])  # the poster's, inside


async def test_a_valid_poster_signature_travels_beside_ours(tmp_path, conf, poster_key, engine_for):
    engine = await engine_for(conf)
    original = signed_post(poster_key[0], subject="Unchanged")
    await send(engine.port, "alice@strict.test", "plain@example.org", original)
    delivered = await wait_for(lambda: len(copies(tmp_path, "Unchanged")) == 5 and copies(tmp_path, "Unchanged"))
    for data in delivered:
        ours, theirs = dkim.DKIM(data), dkim.DKIM(data)
        assert ours.verify(idx=0, dnsfunc=dnsfunc_for(poster_key[2])) and ours.domain == b"example.org"
        assert theirs.verify(idx=1, dnsfunc=dnsfunc_for(poster_key[2])) and theirs.domain == b"strict.test"


def test_a_long_reply_to_is_folded_and_the_header_stays_whole():
    many = ", ".join(f"Team Member {i} <member-number-{i}@strict.test>" for i in range(8))
    out = munge(RawMessage.parse(post("Zed <zed@strict.test>", extra=f"Reply-To: {many}\r\n")), TALK).to_bytes()
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"Hello list.\r\n" and all(len(line) <= 78 for line in head.split(b"\r\n"))
    mail = message_from_bytes(out, policy=default)
    assert [a.addr_spec for a in mail["Reply-To"].addresses][-1] == "zed@strict.test"
    assert len(mail["Reply-To"].addresses) == 9
