"""Mail commands, confirmations, moderation and barring, end to end: a real engine on loopback, a real SQLite
store, replies read back from the pickup folder."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import aiosmtplib
import pytest

from listkeeper.engine.commands import Command, parse
from listkeeper.engine.headers import RawMessage
from listkeeper.engine.housekeeping import run_round
from listkeeper.engine.snapshot import load_snapshot

from .conftest import DOMAIN, pickup_routes, wait_for, write

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  autoresponse_limit: 5
  subscribers:
    - address: alice@example.org
    - address: chair@example.org
      roles: [moderator]
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: club}
spec:
  address: club@example.org
  type: moderated
  moderation: {expiry: 2d}
  subscribers:
    - address: chair@example.org
      roles: [moderator]
    - address: alice@example.org
    - address: bob@example.net
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def mails(tmp_path: Path, to: str | None = None) -> list[Message]:
    folder = tmp_path / "outbox"
    found = [message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))] if folder.exists() else []
    return [m for m in found if to is None or m["Delivered-To"] == to]


def text(mail: Message) -> str:
    part = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    return " ".join(part.get_payload(decode=True).decode().split())


async def send(port: int, sender: str, to: str, subject: str, body: str = "", **headers) -> str:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    data = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\n{body}\r\n".encode()
    _, reply = await aiosmtplib.send(data, sender=sender, recipients=[to], hostname="127.0.0.1", port=port,
                                     start_tls=False)
    return reply


def db(store_url: str) -> sqlite3.Connection:
    return sqlite3.connect(store_url.removeprefix("sqlite:///"))


def test_parse_commands_from_subject_and_body():
    def parsed(subject: str, body: str) -> list[Command]:
        return list(parse(RawMessage.parse(f"Subject: {subject}\r\n\r\n{body}".encode())).commands)

    assert parsed("subscribe", "") == [Command("subscribe")]
    assert parsed("Re: confirm 0a1b2c", "") == [Command("confirm", ("0a1b2c",))]
    assert parsed("", "digest on\r\nhelp\r\n-- \r\nunsubscribe\r\n") == [Command("digest", ("on",)), Command("help")]
    assert parsed("hi", "subscribe <Bob@Example.net> digest\r\n") == [
        Command("subscribe", ("Bob@Example.net", "digest"))]
    assert parsed("", "> unsubscribe\r\n") == []
    result = parse(RawMessage.parse(b"Subject: x\r\n\r\nplease add me\r\nthanks\r\nsubscribe\r\n"))
    assert result.commands == () and result.ignored == ("please add me", "thanks")


async def test_subscribe_needs_the_addresses_confirmation(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    await send(engine.port, "dora@example.com", "members-request@example.org", "subscribe")
    request = (await wait_for(lambda: [m for m in mails(tmp_path, "dora@example.com")
                                       if m["Subject"].startswith("confirm ")]))[0]
    token = request["Subject"].split()[1]
    assert request["Reply-To"] == f"members-confirm+{token}@example.org"
    assert request["Auto-Submitted"] == "auto-replied"
    with db(store_url) as conn:  # the confirmation request is the only answer: one mail, not two
        assert conn.execute("select count(*) from deliveries where recipient='dora@example.com'").fetchone() == (1,)
        assert conn.execute("select count(*) from subscribers where address='dora@example.com'").fetchone() == (0,)
    # replying to the request confirms it
    await send(engine.port, "dora@example.com", request["Reply-To"], f"Re: {request['Subject']}", "yes please")
    welcome = (await wait_for(lambda: [m for m in mails(tmp_path, "dora@example.com") if "Welcome" in text(m)]))[0]
    assert "dora@example.com now receives members@example.org" in text(welcome)
    with db(store_url) as conn:
        assert conn.execute("select source, state, receives from subscribers where address='dora@example.com'"
                            ).fetchone() == ("mail", "active", "post")
        assert conn.execute("select action, source from subscription_changes where address='dora@example.com'"
                            ).fetchall() == [("join", "mail")]
        assert conn.execute("select count from event_counters where address='dora@example.com' and event='join'"
                            ).fetchone() == (1,)
    # the token is used up
    await send(engine.port, "dora@example.com", request["Reply-To"], "again")
    await wait_for(lambda: [m for m in mails(tmp_path, "dora@example.com") if "already used" in text(m)])
    # and her next post is distributed to her too
    await send(engine.port, "alice@example.org", "members@example.org", "Hello all", "hi")
    await wait_for(lambda: [m for m in mails(tmp_path, "dora@example.com") if m["Subject"] == "Hello all"])


async def test_nobody_can_subscribe_or_unsubscribe_someone_else(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    await send(engine.port, "mallory@example.net", "members-request@example.org", "x", "unsubscribe alice@example.org")
    reply = (await wait_for(lambda: mails(tmp_path, "mallory@example.net")))[0]
    assert "A confirmation request was sent to alice@example.org; nothing changes until that address answers" \
        in text(reply)
    asked = (await wait_for(lambda: mails(tmp_path, "alice@example.org")))[0]
    assert "unsubscribe from members@example.org for the address alice@example.org" in text(asked)
    with db(store_url) as conn:
        assert conn.execute("select state from subscribers where list_name='members' and address='alice@example.org'"
                            ).fetchone() == ("active",)
    # alice confirms herself: now she is gone, and posts no longer reach her
    await send(engine.port, "alice@example.org", asked["Reply-To"], "Re: confirm")
    await wait_for(lambda: [m for m in mails(tmp_path, "alice@example.org") if "Goodbye" in text(m)])
    with db(store_url) as conn:
        assert conn.execute("select state from subscribers where list_name='members' and address='alice@example.org'"
                            ).fetchone() == ("unsubscribed",)
        assert conn.execute("select action, source from subscription_changes where address='alice@example.org' and "
                            "list_name='members' order by id").fetchall() == [("join", "manifest"), ("leave", "mail")]
    # reconcile again: the manifest still names her, but her own choice stands
    env = {**os.environ, "LISTKEEPER_STORE": store_url}
    subprocess.run([sys.executable, "-m", "listkeeper", "reconcile", str(conf)], env=env, check=True,
                   capture_output=True)
    with db(store_url) as conn:
        assert conn.execute("select state from subscribers where list_name='members' and address='alice@example.org'"
                            ).fetchone() == ("unsubscribed",)


async def test_digest_help_and_the_daily_autoresponse_limit(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    await send(engine.port, "alice@example.org", "members-request@example.org", "digest on")
    await wait_for(lambda: [m for m in mails(tmp_path, "alice@example.org") if "as a digest" in text(m)])
    with db(store_url) as conn:
        assert conn.execute("select receives, roles from subscribers where list_name='members' and "
                            "address='alice@example.org'").fetchone() == ("digest", "digest")
    await send(engine.port, "alice@example.org", "members-request@example.org", "help")
    helped = await wait_for(lambda: [m for m in mails(tmp_path, "alice@example.org") if "understands" in text(m)])
    assert "subscribe [ADDRESS] [digest]" in helped[0].get_payload()
    # alice has had 2 of her 5 automatic replies today; of the next four commands, three get a reply
    for _ in range(4):
        await send(engine.port, "alice@example.org", "members-request@example.org", "help")
    await wait_for(lambda: len(mails(tmp_path, "alice@example.org")) == 5)
    with db(store_url) as conn:
        assert conn.execute("select count(*) from messages where kind='inbound'").fetchone() == (6,)
        assert conn.execute("select count from autoresponses where address='alice@example.org'").fetchone() == (5,)
    assert len(mails(tmp_path, "alice@example.org")) == 5


async def test_automatic_messages_to_request_are_never_answered(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    await send(engine.port, "alice@example.org", "members-request@example.org", "Out of office", "subscribe",
               Auto_Submitted="auto-replied")
    await send(engine.port, "carl@example.com", "members-request@example.org", "subscribe")
    await wait_for(lambda: mails(tmp_path, "carl@example.com"))
    assert mails(tmp_path, "alice@example.org") == []


async def test_moderators_decide_by_replying_to_the_notice(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    reply = await send(engine.port, "bob@example.net", "club@example.org", "Please approve", "first post")
    assert reply.endswith("held for moderation by club")
    notice = (await wait_for(lambda: mails(tmp_path, "chair@example.org")))[0]
    token = notice["Subject"].split()[1].rstrip(":")
    assert notice["Reply-To"] == f"club-confirm+{token}@example.org"
    held = next(p for p in notice.walk() if p.get_content_type() == "message/rfc822")
    assert held.get_payload(0)["Subject"] == "Please approve"
    # someone who is not a moderator cannot approve, even with the token
    await send(engine.port, "alice@example.org", notice["Reply-To"], "Re: " + notice["Subject"])
    await wait_for(lambda: [m for m in mails(tmp_path, "alice@example.org") if "Only a moderator" in text(m)])
    await send(engine.port, "chair@example.org", notice["Reply-To"], "Re: " + notice["Subject"], "ok\r\n\r\n> quoted")
    await wait_for(lambda: [m for m in mails(tmp_path) if m["Subject"] == "Please approve"
                            and m["Delivered-To"] == "bob@example.net"])
    assert {m["Delivered-To"] for m in mails(tmp_path) if m["Subject"] == "Please approve"} == {
        "alice@example.org", "bob@example.net"}
    with db(store_url) as conn:
        assert conn.execute("select decision, decided_by from holds").fetchall() == [("approved", "chair@example.org")]
    # a second post, rejected with a reason that reaches its sender
    await send(engine.port, "bob@example.net", "club@example.org", "Off topic", "spam")
    notices = await wait_for(lambda: [m for m in mails(tmp_path, "chair@example.org") if "Off topic" in m["Subject"]])
    await send(engine.port, "chair@example.org", notices[0]["Reply-To"], "Re", "reject Not for this list\r\n")
    told = await wait_for(lambda: [m for m in mails(tmp_path, "bob@example.net") if "rejected" in m["Subject"]])
    assert "Reason: Not for this list" in text(told[0])


async def test_moderation_by_the_cli_and_expiry(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    for subject in ("One", "Two"):
        await send(engine.port, "bob@example.net", "club@example.org", subject, "text")
    env = {**os.environ, "LISTKEEPER_STORE": store_url}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], env=env, capture_output=True, text=True)

    listing = cli("moderation", "list", "club").stdout
    assert "bob@example.net" in listing and "One" in listing and "Two" in listing
    with db(store_url) as conn:
        tokens = dict(conn.execute("select subject, token from holds").fetchall())
    approved = cli("moderation", "approve", tokens["One"])
    assert approved.returncode == 0 and "was approved" in approved.stdout
    await wait_for(lambda: [m for m in mails(tmp_path, "alice@example.org") if m["Subject"] == "One"])
    assert cli("moderation", "approve", "nosuchtoken").returncode == 1
    # three days later the other hold has expired (club's moderation.expiry is 2d); its sender is told
    store = engine.store
    real = store.clock
    store.clock = lambda: real() + 3 * 86400  # the engine's injected clock: the scheduler sees the same time
    done = run_round(store, load_snapshot(store), store.now())
    assert done.queued == {"moderation.expire": 1}
    told = await wait_for(lambda: [m for m in mails(tmp_path, "bob@example.net") if "expired" in m["Subject"]])
    assert "Two" in text(told[0])
    assert "No posts of club are held." in cli("moderation", "list", "club").stdout


BARRING = """
apiVersion: listkeeper/v1
kind: Barring
metadata: {name: inbound}
spec:
  senders: ["spam@example.net", "news-*@example.com"]
  domains: ["*.junk.example"]
  max_size: 2048
"""


async def test_barring_refuses_at_smtp_time_and_records_why(tmp_path, conf, engine_for, store_url):
    write(conf, "barring.yaml", BARRING)
    engine = await engine_for(conf)
    for sender, code in (("spam@example.net", 550), ("news-weekly@example.com", 550), ("x@mail.junk.example", 550)):
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await send(engine.port, sender, "members@example.org", "hi")
        assert info.value.code == code
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:  # the client declares SIZE=: refused at MAIL
        await send(engine.port, "alice@example.org", "members@example.org", "big", "x" * 4000)
    assert info.value.code == 552
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False) as client:
        await client.ehlo()  # without SIZE=, the size is checked once the data is in
        await client.mail("alice@example.org")
        await client.rcpt("members@example.org")
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 60)
        assert info.value.code == 552
    with pytest.raises(aiosmtplib.SMTPDataError):  # a barred From behind an innocent envelope sender
        data = b"From: spam@example.net\r\nSubject: hi\r\n\r\nx\r\n"
        await aiosmtplib.send(data, sender="alice@example.org", recipients=["members@example.org"],
                              hostname="127.0.0.1", port=engine.port, start_tls=False)
    await send(engine.port, "alice@example.org", "members@example.org", "fine", "small")
    with db(store_url) as conn:
        rows = conn.execute("select mail_from, rule, reason, peer from refusals order by id").fetchall()
        assert [r[:2] for r in rows] == [
            ("spam@example.net", "barring.sender"), ("news-weekly@example.com", "barring.sender"),
            ("x@mail.junk.example", "barring.domain"), ("alice@example.org", "barring.size"),
            ("alice@example.org", "barring.size"), ("alice@example.org", "barring.sender")]
        assert rows[2][2] == "sender domain mail.junk.example matches *.junk.example"
        assert all(r[3] == "127.0.0.1" for r in rows)
        assert conn.execute("select count(*) from messages where kind='inbound'").fetchone() == (1,)
