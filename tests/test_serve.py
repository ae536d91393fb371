"""The engine end to end over real sockets and a real SQLite file: accept, store, fan out, deliver."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import aiosmtplib
import pytest

from .conftest import DOMAIN, pickup_routes, tagged_verp, wait_for, write

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subject_prefix: "[members]"
  non_members: reject
  subscribers:
    - address: alice@example.org
    - address: bob@example.net
    - address: carol@example.com
    - address: dan@example.com
      roles: [digest]
    - address: chair@example.org
      roles: [moderator, regular]
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: announce}
spec:
  address: announce@example.org
  type: announce
  subscribers:
    - address: chair@example.org
      roles: [moderator]
    - address: alice@example.org
    - address: bob@example.net
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: club}
spec:
  address: club@example.org
  type: moderated
  subscribers:
    - address: chair@example.org
      roles: [moderator]
    - address: alice@example.org
"""


def message(sender: str, to: str, subject: str, body: str = "Hello everyone.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((sender, subject)))}@test>\r\n\r\n{body}").encode()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def outbox(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "outbox"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def delivered_to(tmp_path: Path) -> Counter:
    return Counter(message_from_bytes(p.read_bytes())["Delivered-To"] for p in outbox(tmp_path))


async def send(port: int, sender: str, rcpts: list[str], data: bytes):
    return await aiosmtplib.send(data, sender=sender, recipients=rcpts, hostname="127.0.0.1", port=port,
                                 start_tls=False)


async def test_post_is_delivered_once_to_each_regular_subscriber(tmp_path, conf, engine_for):
    engine = await engine_for(conf)
    errors, reply = await send(engine.port, "alice@example.org", ["members@example.org"],
                               message("Alice <alice@example.org>", "members@example.org", "Hello"))
    assert errors == {} and reply.startswith("2.0.0 Queued as ")
    await wait_for(lambda: len(outbox(tmp_path)) == 4)
    assert delivered_to(tmp_path) == Counter(
        {"alice@example.org": 1, "bob@example.net": 1, "carol@example.com": 1, "chair@example.org": 1})
    for path in outbox(tmp_path):
        msg = message_from_bytes(path.read_bytes())
        rcpt = msg["Delivered-To"]
        assert msg["Return-Path"] == f"<{tagged_verp(engine.store, rcpt)}>"  # VERP, tagged
        assert msg["List-Id"] == "<members.example.org>"
        assert msg["List-Post"] == "<mailto:members@example.org>"
        one_click, mailto = " ".join(msg["List-Unsubscribe"].split()).split(", ")  # a link of their own
        assert re.fullmatch(rf"<http://127\.0\.0\.1:{engine.web.port}/unsubscribe/[\w-]+\.[\w-]{{43}}>", one_click)
        assert mailto == "<mailto:members-request@example.org?subject=unsubscribe>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["Subject"] == "[members] Hello"
        assert msg.get_payload() == "Hello everyone.\r\n"


async def test_reply_250_only_after_the_message_is_stored(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    _, reply = await send(engine.port, "bob@example.net", ["members@example.org"],
                          message("bob@example.net", "members@example.org", "Durable"))
    message_id = int(reply.rsplit(" ", 1)[1])
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))  # a separate connection sees the commit
    kind, recipients = db.execute("select kind, recipients from messages where id=?", (message_id,)).fetchone()
    assert kind == "inbound" and json.loads(recipients) == ["members@example.org"]
    (count,) = db.execute("select count(*) from deliveries d join messages m on m.id = d.message_id "
                          "where m.parent_id = ?", (message_id,)).fetchone()
    assert count == 4
    db.close()


async def test_never_an_open_relay(conf, engine_for):
    engine = await engine_for(conf)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
        await send(engine.port, "spammer@evil.test", ["victim@gmail.com"], message("x@y", "v@gmail.com", "x"))
    assert info.value.recipients[0].code == 550
    assert info.value.recipients[0].message.startswith("5.7.1 Relaying denied")


async def test_non_subscriber_is_refused_and_nothing_stored(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await send(engine.port, "eve@example.net", ["members@example.org"],
                   message("eve@example.net", "members@example.org", "Spam"))
    assert info.value.code == 550
    assert info.value.message == "5.7.1 Only subscribers may post to members@example.org"
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    assert db.execute("select count(*) from messages").fetchone() == (0,)
    db.close()


async def test_announce_list_takes_posts_from_moderators_only(tmp_path, conf, engine_for):
    engine = await engine_for(conf)
    _, reply = await send(engine.port, "alice@example.org", ["announce@example.org"],
                          message("alice@example.org", "announce@example.org", "Me too"))
    assert reply.endswith("held for moderation by announce")  # non_members: hold (the default)
    await wait_for(lambda: len(outbox(tmp_path)) == 1)  # the moderators' notice
    assert delivered_to(tmp_path) == Counter({"chair@example.org": 1})
    await send(engine.port, "chair@example.org", ["announce@example.org"],
               message("chair@example.org", "announce@example.org", "News"))
    await wait_for(lambda: len(outbox(tmp_path)) == 3)
    assert delivered_to(tmp_path) == Counter({"alice@example.org": 1, "bob@example.net": 1, "chair@example.org": 1})


async def test_moderated_list_holds_posts(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    _, reply = await send(engine.port, "alice@example.org", ["club@example.org"],
                          message("alice@example.org", "club@example.org", "Please approve"))
    assert reply.endswith("held for moderation by club")
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    assert db.execute("select state, list_name, reason from messages where kind='post' order by id").fetchall() == [
        ("queued", "club", "moderation: notice to the moderators"), ("held", "club", "moderated: every post to a "
                                                                   "moderated list is held")]
    assert db.execute("select recipient from deliveries").fetchall() == [("chair@example.org",)]
    db.close()
    await wait_for(lambda: len(outbox(tmp_path)) == 1)
    notice = message_from_bytes(outbox(tmp_path)[0].read_bytes())
    assert notice["Subject"].startswith("confirm ") and notice["Reply-To"].startswith("club-confirm+")


async def test_many_concurrent_posts_each_delivered_exactly_once(tmp_path, conf, engine_for):
    engine = await engine_for(conf)
    senders = ["alice@example.org", "bob@example.net", "carol@example.com", "chair@example.org"]

    async def session(sender: str, count: int):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False) as client:
            for i in range(count):
                await client.sendmail(sender, ["members@example.org"],
                                      message(sender, "members@example.org", f"post {i}"))

    await asyncio.wait_for(asyncio.gather(*(session(s, 15) for s in senders)), timeout=60)
    await wait_for(lambda: len(outbox(tmp_path)) == 60 * 4, timeout=60)
    assert set(delivered_to(tmp_path).values()) == {60}
