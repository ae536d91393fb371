"""List events: the seed's example over simulated days, validation, firing by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import select

from listkeeper.engine.events import tick
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.store import events as store_events
from listkeeper.store.tables import messages

from .conftest import REPO, pickup_routes, wait_for, write
from .test_serve import send

DAY = 86400.0


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "events.yaml", (REPO / "examples" / "events.yaml").read_text())
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


async def test_reminder_on_the_fifth_day_only_for_who_never_posted(tmp_path, conf, engine_for):
    engine = await engine_for(conf)
    store = engine.store
    start = store.now() - 8 * DAY  # simulated days in the past, so what they queue is due at once
    with store.engine.connect() as conn:  # reconcile made them subscribers: join fired once each
        assert store_events.counters(conn, "newcomers") == {"alice@example.org": {"join": 1},
                                                            "bob@example.net": {"join": 1}}
    for day in range(1, 8):
        if day == 2:  # bob posts on day 2, through SMTP like anyone
            await send(engine.port, "bob@example.net", ["newcomers@newcomers.example"],
                       b"From: bob@example.net\r\nSubject: Hi\r\n\r\nHello.\r\n")

            def posted():
                with store.engine.connect() as conn:
                    return store_events.counters(conn, "newcomers", ["bob@example.net"])["bob@example.net"].get("post")

            await wait_for(posted)
        tick(store, load_snapshot(store), start + day * DAY)
        if day == 5:  # delivered at once, as serve does after a tick: rendered with the counters of day 5
            engine.scheduler.wake()
            delivered = await wait_for(lambda: [p for p in (tmp_path / "outbox").glob("*.eml")
                                                if b"Subject: How to post" in p.read_bytes()] or None)
    with store.engine.connect() as conn:
        reminders = store_events.fires(conn, "newcomers", "reminder")
        counts = store_events.counters(conn, "newcomers")
        stored = conn.execute(select(messages.c.kind, messages.c.data)
                              .where(messages.c.reason == "event reminder")).all()
    assert reminders == [("alice@example.org", start + 5 * DAY)]
    assert counts["alice@example.org"]["daily"] == 7 and counts["bob@example.net"]["daily"] == 7
    assert "reminder" not in counts["bob@example.net"]
    assert [kind for kind, _ in stored] == ["template"]  # stored once per fire, rendered per recipient
    (path,) = delivered
    parsed = message_from_bytes(path.read_bytes())
    assert parsed["To"] == "alice@example.org" and parsed["Delivered-To"] == "alice@example.org"
    assert parsed["Subject"] == "How to post to newcomers@newcomers.example"
    assert "joined newcomers 5 days ago" in parsed.get_payload()


def test_cli_tick_and_events(tmp_path, conf):
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, env=env)

    assert run("reconcile", str(conf)).returncode == 0
    assert run("tick", "--at", "2030-01-01T00:00").stdout.strip() == "newcomers/daily: fired for 2"
    assert run("tick", "--at", "2030-01-01T12:00").stdout.strip() == "Nothing was due."
    fired = run("events", "fire", "newcomers", "reminder", "--member", "bob@example.net")
    assert fired.stdout.strip() == "newcomers/reminder: fired for 1"
    shown = run("events", "show", "newcomers").stdout.splitlines()
    assert shown[0].split() == ["subscriber", "daily", "join", "reminder"]
    assert shown[1].split() == ["alice@example.org", "1", "1", "0"]
    assert shown[2].split() == ["bob@example.net", "1", "1", "1"]
    refused = run("events", "fire", "newcomers", "reminder", "--member", "eve@example.org")
    assert refused.returncode == 1 and "not subscribed to newcomers: eve@example.org" in refused.stderr


LIST = """
apiVersion: listkeeper/v1
kind: Domain
metadata: {name: d}
spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: l}
spec:
  address: l@example.org
  type: discussion
  events:
"""


@pytest.mark.parametrize("events,expected", [
    ("    - {name: a, depends: [{event: ghost, at_least: 1}]}\n", "spec.events[0].depends[0].event: no event named 'ghost'"),
    ("    - {name: a, depends: [{event: b, at_least: 1}]}\n    - {name: b, depends: [{event: a, never: true}]}\n",
     "spec.events[0].depends: dependencies form a cycle: a -> b -> a"),
    ("    - {name: a, depends: [{event: join, at_least: 5, at_most: 3}]}\n",
     "spec.events[0].depends[0]: at_least 5 and at_most 3 can never both hold"),
    ("    - {name: a, template: {subject: hi}}\n", "spec.events[0].template.body: required field is missing"),
    ("    - {name: a, template: {subject: hi, body: '{{ oops'}}\n", "spec.events[0].template: the template does not compile"),
    ("    - {name: post}\n", "spec.events[0].name: post is a built-in event"),
])
def test_event_errors(tmp_path, events, expected):
    write(tmp_path / "conf", "l.yaml", LIST + events)
    with pytest.raises(ManifestErrors) as info:
        load_manifests([tmp_path / "conf"])
    assert any(expected in str(e) and "l.yaml:1" in str(e) for e in info.value.errors), \
        [str(e) for e in info.value.errors]


async def test_serve_ticks_and_mails_the_template(tmp_path, conf, engine_for):
    write(conf, "events.yaml", (REPO / "examples" / "events.yaml").read_text().replace(
        "depends:\n        - {event: daily, at_least: 5, at_most: 5}\n        - {event: post, never: true}",
        "depends:\n        - {event: join, at_least: 1}"))
    await engine_for(conf, tick_interval=0.2)
    mails = await wait_for(lambda: sorted((tmp_path / "outbox").glob("*.eml")) or None)
    await wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) == 2)
    assert {message_from_bytes(p.read_bytes())["Subject"] for p in (tmp_path / "outbox").glob("*.eml")} == {
        "How to post to newcomers@newcomers.example"}
    assert mails


async def test_firing_by_mail_with_a_reply_to_every_command(tmp_path, conf, engine_for):
    write(conf, "events.yaml", (REPO / "examples" / "events.yaml").read_text().replace(
        "    - address: bob@example.net\n",
        "    - address: bob@example.net\n    - address: chair@example.org\n      roles: [moderator]\n"))
    engine = await engine_for(conf)

    async def command(sender: str, to: str, body: str) -> None:
        await send(engine.port, sender, [to], f"From: {sender}\r\nSubject: cmd\r\n\r\n{body}\r\n".encode())

    await command("alice@example.org", "newcomers-request@newcomers.example", "event reminder")
    await command("alice@example.org", "newcomers-request@newcomers.example", "event reminder bob@example.net")
    await command("chair@example.org", "mailserver@newcomers.example", "event reminder bob@example.net")
    await command("eve@example.com", "mailserver@newcomers.example", "event reminder")
    await command("alice@example.org", "newcomers-request@newcomers.example", "event nosuch")

    def replies():
        found = {}
        for path in (tmp_path / "outbox").glob("*.eml"):
            msg = message_from_bytes(path.read_bytes())
            if msg["Subject"] == "Re: cmd":
                text = msg.get_payload()
                quoted, answer = text.replace("\r\n", "\n").split("\n", 1)
                assert quoted.startswith("> event ")  # the command, quoted whole
                found.setdefault(msg["Delivered-To"], []).append(" ".join(answer.split()))
                if "fired for bob" in answer or "for someone else" in answer:
                    assert quoted == "> event reminder bob@example.net"
        return found if sum(len(v) for v in found.values()) == 5 else None

    got = await wait_for(replies)
    assert sorted(got["alice@example.org"]) == sorted([
        "Event reminder fired for alice@example.org on newcomers@newcomers.example.",
        "Only a moderator of newcomers@newcomers.example may fire an event for someone else; nothing happened.",
        "newcomers@newcomers.example has no event named 'nosuch'; nothing happened."])
    assert got["chair@example.org"] == ["Event reminder fired for bob@example.net on newcomers@newcomers.example."]
    assert got["eve@example.com"] == ["eve@example.com is not subscribed to newcomers@newcomers.example; "
                                      "nothing happened."]
    with engine.store.engine.connect() as conn:
        assert [a for a, _ in store_events.fires(conn, "newcomers", "reminder")] == ["alice@example.org",
                                                                                      "bob@example.net"]


def test_removing_an_event_says_how_many_counters_it_drops(tmp_path, conf):
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, env=env)

    run("reconcile", str(conf))
    run("tick", "--at", "2030-01-01T00:00")
    text = (conf / "events.yaml").read_text()
    reminder = text[text.index("    - name: reminder"):]
    write(conf, "events.yaml", text.replace("repeat: 1d", "repeat: 2d"))  # a change that keeps the name
    dry = run("reconcile", str(conf), "--dry-run")
    assert "drops" not in dry.stdout and '~ spec.events[0].repeat: 86400.0 → 172800.0' in dry.stdout
    write(conf, "events.yaml", text.replace(text[text.index("    - name: daily"):text.index("    - name: reminder")], "")
          .replace("        - {event: daily, at_least: 5, at_most: 5}\n", ""))
    dry = run("reconcile", str(conf), "--dry-run")
    assert "MailingList/newcomers: removing event daily drops 2 subscriber counters" in dry.stdout
    run("reconcile", str(conf))
    shown = run("events", "show", "newcomers").stdout.splitlines()
    assert shown[0].split() == ["subscriber", "join"]
    assert reminder


def test_template_mail_is_clean_mime_with_non_ascii():
    from email import policy
    from email.parser import BytesParser

    from listkeeper.engine.events import template_mail
    from listkeeper.engine.snapshot import ListConfig
    from listkeeper.manifests.lists import MailingListSpec
    lst = ListConfig("newcomers", MailingListSpec.model_validate({
        "address": "newcomers@example.org", "type": "discussion",
        "events": [{"name": "hello", "template": {"subject": "Grüße, {{ subscriber.address }}",
                                                   "body": "Hallo {{ subscriber.address }}!\nTschüß."}}]}))
    data = template_mail(lst, lst.spec.events[0], "anna@example.org", {}, "lists.example.org", 0.0)
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    assert parsed["Subject"] == "Grüße, anna@example.org"
    assert parsed.get_content() == "Hallo anna@example.org!\r\nTschüß.\r\n"
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
