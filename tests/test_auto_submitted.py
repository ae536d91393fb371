"""Auto-Submitted hygiene (RFC 3834): the engine never answers automatic mail, list traffic or list
software, and what it writes itself says it is automatic. Pure decisions first, then a real engine."""

from __future__ import annotations

import sqlite3

import pytest

from listkeeper.engine.headers import RawMessage
from listkeeper.engine.replies import may_answer

from .conftest import wait_for
from .test_commands import conf, mails, send  # noqa: F401 - the fixture and helpers of the command tests


@pytest.mark.parametrize("head, mail_from", [
    ("Auto-Submitted: auto-replied", "alice@example.org"),
    ("Auto-Submitted: auto-generated", "alice@example.org"),
    ("Auto-Submitted: auto-notified", "alice@example.org"),
    ("Auto-Submitted: Auto-Replied; owner-email=alice@example.org", "alice@example.org"),
    ("X-Autoreply: yes", "alice@example.org"),
    ("X-Autorespond: on vacation", "alice@example.org"),
    ("Precedence: auto_reply", "alice@example.org"),
    ("Precedence: bulk", "alice@example.org"),
    ("Precedence: list", "alice@example.org"),
    ("List-Id: <other.example.net>", "alice@example.org"),
    ("", ""),
    ("", "MAILER-DAEMON@example.net"),
    ("", "postmaster@example.net"),
    ("", "owner-other@example.net"),
    ("", "other-request@example.net"),
    ("", "other-bounces+alice=example.org@example.net"),
    ("", "noreply@example.net"),
])
def test_automatic_mail_and_list_software_are_never_answered(head, mail_from):
    assert not may_answer(RawMessage.parse(f"Subject: x\r\n{head}\r\n\r\nbody".encode()), mail_from)


@pytest.mark.parametrize("head", ["", "Auto-Submitted: no", "Auto-Submitted: No", "Precedence: first-class"])
def test_people_are_answered(head):
    assert may_answer(RawMessage.parse(f"Subject: x\r\n{head}\r\n\r\nbody".encode()), "alice@example.org")


async def test_the_engine_answers_people_only_and_marks_its_answers(tmp_path, conf, engine_for, store_url):  # noqa: F811
    engine = await engine_for(conf)
    await send(engine.port, "alice@example.org", "members-request@example.org", "Away", "help", X_Autoreply="yes")
    await send(engine.port, "alice@example.org", "members-request@example.org", "Away", "help",
               Precedence="auto_reply")
    await send(engine.port, "owner-other@example.com", "members-request@example.org", "help", "help")
    await send(engine.port, "alice@example.org", "members@example.org", "Out of office",
               Auto_Submitted="auto-replied")  # a post: dropped, nobody is told
    await send(engine.port, "carl@example.com", "members-request@example.org", "help")
    reply = (await wait_for(lambda: mails(tmp_path, "carl@example.com")))[0]
    assert reply["Auto-Submitted"] == "auto-replied" and reply["Precedence"] == "list"
    assert reply["X-Loop"] == "members@example.org" and reply["In-Reply-To"] is None  # carl's had no Message-ID
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    (inbound,) = db.execute("select count(*) from messages where kind='inbound'").fetchone()
    states = db.execute("select state, reason from messages where kind='post' and list_name='members' "
                        "and reason like 'automated%'").fetchall()
    db.close()
    assert inbound == 5
    assert states == [("discarded", "automated: an automatic message (Auto-Submitted: auto-replied)")]
    assert len(mails(tmp_path)) == 1  # only carl was answered
