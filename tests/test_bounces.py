"""Bounces: the score rules, scoring in the store on an injected clock, the CLI, our own delivery reports,
and the engine end to end (a post, bounces over SMTP to the VERP address, disabled at the threshold, the
owner told, the next post not sent to them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from email import message_from_bytes
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from listkeeper.engine.bounce_reports import HARD, SOFT
from listkeeper.engine.bounces import assess
from listkeeper.engine.fanout import fan_out
from listkeeper.engine.housekeeping import run_round
from listkeeper.engine.recipients import accept_recipient
from listkeeper.engine.server import ServeOptions, start_engine
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.addresses import parse_verp, sign_verp, unverp
from listkeeper.manifests.lists import Bounces
from listkeeper.reconcile import reconcile
from listkeeper.store import Store, subscribers
from listkeeper.store import queue as store_queue
from listkeeper.store import bounces as store_bounces
from listkeeper.store.bounces import Standing
from listkeeper.store.queue import Outcome, PostRecord
from listkeeper.store.tables import bounces, deliveries, messages, subscription_changes

from .conftest import DOMAIN, pickup_routes, tagged_verp, wait_for, write
from .test_bounce_reports import sample
from .test_scheduler import config as relay_config
from .test_scheduler import post as relay_post
from .test_scheduler import sink  # noqa: F401 - the relay fixture
from .test_serve import send

DAY = 86400.0
MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc).timestamp()
VERP_ALICE = "members-bounces+alice=example.net@example.org"  # untagged: as anyone can write it


# --- the score rules, pure -----------------------------------------------------------------------------

RULES = Bounces()
NOON = MONDAY + 3 * 3600


@pytest.mark.parametrize("before, kind, at, counted, score, disable", [
    (Standing(0, None, None), HARD, NOON, True, 1, False),  # a first hard bounce
    (Standing(0, None, None), SOFT, NOON, True, 0.5, False),  # a first soft bounce
    (Standing(1, MONDAY, MONDAY), HARD, NOON, False, 1, False),  # the same day: once a day
    (Standing(1, MONDAY, MONDAY), HARD, MONDAY + DAY, True, 2, False),  # the next day
    (Standing(4, MONDAY, MONDAY), HARD, MONDAY + DAY, True, 5, True),  # the threshold (5) is reached
    (Standing(4.5, MONDAY, MONDAY), SOFT, MONDAY + DAY, True, 5, True),
    (Standing(4, MONDAY, MONDAY), HARD, MONDAY + 7 * DAY, True, 1, False),  # a quiet week: from zero
    (Standing(4, MONDAY + DAY, MONDAY), HARD, MONDAY + 7 * DAY, True, 5, True),  # not quiet: a bounce on day 1
])
def test_score_rules(before, kind, at, counted, score, disable):
    verdict = assess(before, kind, RULES, at)
    assert (verdict.counted, verdict.score, verdict.disable) == (counted, score, disable)


def test_rules_are_set_per_list():
    rules = Bounces.model_validate({"threshold": 2, "hard": 2, "soft": 0, "stale_after": "3d"})
    assert assess(Standing(0, None, None), HARD, rules, NOON).disable
    assert assess(Standing(0, None, None), SOFT, rules, NOON).score == 0
    assert assess(Standing(1, MONDAY, MONDAY), HARD, rules, MONDAY + 3 * DAY).score == 2


def test_settings_are_validated_with_their_position(tmp_path):
    folder = tmp_path / "bad"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LIST.replace("  type: discussion\n",
                                             "  type: discussion\n  bounces: {threshold: 0, stale_after: soon}\n"))
    with pytest.raises(ManifestErrors) as raised:
        load_manifests([folder])
    errors = [str(e).rpartition("/")[2] for e in raised.value.errors]
    assert errors == ["lists.yaml:7:13: spec.bounces.threshold: Input should be greater than 0",
                      "lists.yaml:7:27: spec.bounces.stale_after: expected a duration such as 30s, 5m, 2h, 5d or a "
                      "number of seconds"]


# --- the store on an injected clock --------------------------------------------------------------------

LIST = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subscribers:
    - address: alice@example.net
    - address: bob@example.net
    - address: kim@example.net
    - address: sam@example.net
      roles: [digest]
    - address: chair@example.org
      roles: [moderator]
"""


class Clock:
    def __init__(self, at: float):
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LIST)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


@pytest.fixture
def clock() -> Clock:
    return Clock(MONDAY)


@pytest.fixture
def store(conf, store_url, clock):
    opened = Store.open(store_url, clock=clock)
    reconcile(load_manifests([conf]), opened)
    yield opened
    opened.close()


def receive(store: Store, to: str, data: bytes, mail_from: str = "") -> None:
    """A bounce arrives now (as the SMTP handler takes it), then one housekeeping round reads it."""
    snapshot = load_snapshot(store)
    record = fan_out(data, mail_from, [accept_recipient(to, snapshot)], snapshot, store.now())
    with store.engine.begin() as conn:
        store_queue.spool(conn, [record], store.now())
    assert not run_round(store, snapshot, store.now()).failed


def recorded(store: Store) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(bounces.c.address, bounces.c.kind, bounces.c.counted)
                                               .order_by(bounces.c.id))]


def member(store: Store, address: str):
    with store.engine.connect() as conn:
        return subscribers.get(conn, "members", address)


def signed(store: Store, address: str = "alice@example.net") -> str:
    """The tagged VERP address delivery gives a copy to `address` (tags begin: the key is made)."""
    return tagged_verp(store, address)


def sent(store: Store, *addresses: str, verp: bool = True) -> None:
    """A copy to each address was queued and tried now: a list copy, or a notice sent with the plain address."""
    post = PostRecord("members", "queued", "a copy", b"Subject: A copy\r\n\r\nHello.\r\n",
                      "members-bounces@example.org", addresses, verp=verp)
    with store.engine.begin() as conn:
        store_queue.insert_posts(conn, [(None, 1, post)], store.now())
        due = store_queue.claim_due(conn, store.now(), 100, 60)
        store_queue.record_outcomes(conn, [Outcome(d.delivery_id, "delivered", "smtp") for d in due], store.now())


def history(store: Store, address: str) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(bounces.c.detail).where(bounces.c.address == address)
                                 .order_by(bounces.c.id)).scalars())


def owner_notices(store: Store) -> list[bytes]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(messages.c.data).where(
            messages.c.reason == "bounces: notice to the owner")).scalars())


def test_once_a_day_threshold_and_owner_notice(store, clock):
    VERP_ALICE = signed(store)
    for day, name in enumerate(["postfix.eml", "gmail.eml", "office365.eml", "qmail.eml"]):
        clock.at = MONDAY + day * DAY
        receive(store, VERP_ALICE, sample(name))  # VERP names alice, whichever address the report names
        clock.at += 3600
        receive(store, VERP_ALICE, sample("postfix-delayed.eml"))  # the same day: recorded, not counted
        assert member(store, "alice@example.net").bounce_score == day + 1
    assert member(store, "alice@example.net").state == "active" and not owner_notices(store)
    clock.at = MONDAY + 4 * DAY
    receive(store, VERP_ALICE, sample("sendmail.eml"))
    alice = member(store, "alice@example.net")
    assert (alice.state, alice.bounce_score, alice.bounce_last_at) == ("disabled", 5, MONDAY + 4 * DAY)
    assert recorded(store) == [("alice@example.net", HARD, 1), ("alice@example.net", SOFT, 0)] * 4 + [
        ("alice@example.net", HARD, 1)]
    with store.engine.connect() as conn:
        change = conn.execute(select(subscription_changes).where(subscription_changes.c.action == "disabled")).one()
    assert (change.address, change.source, change.detail) == (
        "alice@example.net", "bounce", "bounce score 5 reached the threshold 5")
    (notice,) = owner_notices(store)
    parsed = message_from_bytes(notice)
    assert parsed["To"] == "members-owner@example.org"
    assert parsed["Subject"] == "alice@example.net disabled on members@example.org: too many bounces"
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = parsed.get_payload()[0].get_payload(decode=True).decode()
    assert "listkeeper members enable members alice@example.net" in text
    assert parsed.get_payload()[1].get_content_type() == "message/rfc822"
    with store.engine.connect() as conn:  # the notice goes to the moderators; nothing answers a bounce
        assert conn.execute(select(deliveries.c.recipient)).scalars().all() == ["chair@example.org"]
    receive(store, VERP_ALICE, sample("postfix.eml"))  # a late bounce for a disabled member: not counted
    assert recorded(store)[-1] == ("alice@example.net", HARD, 0) and len(owner_notices(store)) == 1


def test_a_quiet_week_starts_the_score_from_zero(store, clock):
    VERP_ALICE = signed(store)
    receive(store, VERP_ALICE, sample("postfix.eml"))
    clock.at += DAY
    receive(store, VERP_ALICE, sample("postfix.eml"))
    assert member(store, "alice@example.net").bounce_score == 2
    clock.at += 7 * DAY - 60
    run_round(store, load_snapshot(store), clock.at)  # not yet stale
    assert member(store, "alice@example.net").bounce_score == 2
    clock.at += 60
    run_round(store, load_snapshot(store), clock.at)  # the housekeeping job sets it back
    assert member(store, "alice@example.net").bounce_score == 0
    receive(store, VERP_ALICE, sample("postfix-delayed.eml"))
    assert member(store, "alice@example.net").bounce_score == 0.5


def test_reports_to_the_plain_bounce_address_are_read_but_never_count(store):
    signed(store)
    sent(store, "kim@example.net")  # a list copy: a bounce of it comes back to its tagged VERP address
    sent(store, "sam@example.net", verp=False)  # mail sent with the plain bounce address (before tags)
    receive(store, "members-bounces@example.org", sample("exim.eml"))  # kim (regular), sam (digest)
    receive(store, "members-bounces@example.org", sample("gmail.eml"))  # gina: no member, not recorded
    assert recorded(store) == [("kim@example.net", HARD, 0), ("sam@example.net", HARD, 0)]
    assert member(store, "kim@example.net").bounce_score == 0 and member(store, "sam@example.net").bounce_score == 0
    assert history(store, "sam@example.net")[0].endswith(
        "unattributed: a report to the plain bounce address (every mail of ours leaves with a tagged VERP address)")


def test_forged_bounces_are_recorded_not_counted(store, clock):
    VERP_ALICE_SIGNED = signed(store)  # tags begin; then every copy leaves tagged
    sent(store, "alice@example.net", "kim@example.net", "sam@example.net")
    for day in range(6):  # a forger's daily bounce, untagged: the queue holds alice's copy, but it left tagged
        clock.at = MONDAY + day * DAY
        receive(store, VERP_ALICE, sample("postfix.eml"))
    receive(store, VERP_ALICE.replace("@", "+abcdefgh@"), sample("postfix.eml"))  # a made-up tag
    receive(store, VERP_ALICE_SIGNED.replace("@", "x@"), sample("postfix.eml"))  # a tag, altered
    receive(store, "members-bounces+bob=example.net+" + VERP_ALICE_SIGNED.split("+")[2], sample("postfix.eml"))
    receive(store, "members-bounces@example.org", sample("exim.eml"))  # kim and sam, named in a report only
    assert recorded(store) == [("alice@example.net", HARD, 0)] * 8 + [
        ("bob@example.net", HARD, 0), ("kim@example.net", HARD, 0), ("sam@example.net", HARD, 0)]
    for address in ("alice@example.net", "bob@example.net", "kim@example.net", "sam@example.net"):
        assert (member(store, address).state, member(store, address).bounce_score) == ("active", 0)
    with store.engine.connect() as conn:  # the list's table counts no unattributed bounce
        assert [(e.address, e.hard, e.soft) for e in store_bounces.entries(conn, "members", everyone=True)
                if e.address in ("alice@example.net", "kim@example.net")] == [("alice@example.net", 0, 0),
                                                                               ("kim@example.net", 0, 0)]
    alice = history(store, "alice@example.net")
    assert alice[0].endswith("not counted: unattributed: verp token not signed by this server (no tag)")
    assert alice[-1].endswith("not counted: unattributed: verp token not signed by this server")
    assert history(store, "kim@example.net")[0].endswith(
        "unattributed: a report to the plain bounce address (every mail of ours leaves with a tagged VERP address)")


def test_a_forged_command_then_forged_reports_do_not_disable_a_member(store, clock):
    """'help' to LIST-request with the victim's address as sender gets the victim a reply. It left with the
    plain bounce address, and reports to that address naming the victim then counted, once a day, for 7
    days: five forged mails disabled the member, no tag needed. Notices now leave with the recipient's
    tagged VERP address, as list copies do: the forged reports are unattributed, and a bounce of the
    reply itself still counts."""
    signed(store)
    receive(store, "members-request@example.org", b"From: sam@example.net\r\nSubject: help\r\n\r\nhelp\r\n",
            mail_from="sam@example.net")
    with store.engine.begin() as conn:  # the reply is delivered
        due = store_queue.claim_due(conn, store.now(), 100, 60)
        assert [(d.recipient, d.return_path) for d in due] == [("sam@example.net",
                                                                "members-bounces+sam=example.net@example.org")]
        store_queue.record_outcomes(conn, [Outcome(d.delivery_id, "delivered", "smtp") for d in due], store.now())
    for day in range(5):
        clock.at = MONDAY + 3600 + day * DAY
        receive(store, "members-bounces@example.org", sample("exim.eml"))  # forged: names kim and sam
    assert (member(store, "sam@example.net").state, member(store, "sam@example.net").bounce_score) == ("active", 0)
    receive(store, tagged_verp(store, "sam@example.net"), sample("postfix.eml"))
    assert member(store, "sam@example.net").bounce_score == 1


def test_a_tag_with_non_ascii_letters_is_unattributed_not_unreadable(store):
    """SMTPUTF8 lets anyone write one: it is a wrong tag like any other, not a bounce no one could read."""
    signed(store)
    receive(store, VERP_ALICE.replace("@", "+\u00e4bcdefgh@"), sample("postfix.eml"))
    with store.engine.connect() as conn:
        assert conn.execute(select(messages.c.state).where(messages.c.state.like("bounce%"))).scalars().all() == [
            "bounce-done"]
    assert recorded(store) == [("alice@example.net", HARD, 0)]
    assert history(store, "alice@example.net")[0].endswith("unattributed: verp token not signed by this server")


def test_untagged_bounces_are_recorded_not_counted_even_for_copies_sent_before_tags(store, clock):
    sent(store, "alice@example.net")  # queued and sent before the upgrade: its return path had no tag
    receive(store, VERP_ALICE, sample("postfix.eml"))  # its bounce cannot be told from a forged one
    assert recorded(store) == [("alice@example.net", HARD, 0)]
    assert member(store, "alice@example.net").bounce_score == 0
    receive(store, signed(store), sample("postfix.eml"))  # the next copy's bounce counts
    assert member(store, "alice@example.net").bounce_score == 1


@pytest.mark.parametrize("address", ["alice@example.net", "a+b=c@example.net", "x=y+z@sub.example.net",
                                     "=+@example.net"])
def test_verp_round_trips_plus_and_equals_in_the_local_part(address):
    key = b"k" * 32
    tagged = sign_verp(key, "members-bounces@example.org", address)
    assert tagged.startswith("members-bounces+") and tagged.endswith("@example.org")
    token = tagged.removeprefix("members-bounces+").removesuffix("@example.org")
    recipient, tag = parse_verp(token)
    assert recipient == address and len(tag) == 8 and unverp(token) == address
    assert parse_verp(token.rpartition("+")[0]) == (address, None)  # untagged, as stored in the queue


def test_auto_replies_and_mail_from_people_are_no_bounces(store):
    VERP_ALICE = signed(store)
    away = (b"From: alice@example.net\r\nTo: members-bounces+alice=example.net@example.org\r\n"
            b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack on Monday.\r\n")
    receive(store, VERP_ALICE, away)  # RFC 3834 sends it with a null sender too
    receive(store, VERP_ALICE, away.replace(b"Auto-Submitted: auto-replied\r\n", b""), "alice@example.net")
    delivered = sample("postfix.eml").replace(b"Action: failed\nStatus: 5.0.0", b"Action: delivered\nStatus: 2.0.0")
    assert b"Action: delivered" in delivered
    receive(store, VERP_ALICE, delivered)  # a success notice is a report too, but names no failure
    assert recorded(store) == [] and member(store, "alice@example.net").bounce_score == 0
    unknown = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Returned\r\n\r\nSomething went wrong.\r\n"
    receive(store, VERP_ALICE, unknown)  # a null sender to a VERP address: a bounce, though unreadable
    assert recorded(store) == [("alice@example.net", HARD, 1)]
    with store.engine.connect() as conn:
        states = sorted(conn.execute(select(messages.c.state).where(messages.c.reason.like("bounce%"))).scalars())
    assert states == ["bounce-done"] * 4


def test_cli_shows_scores_and_enables_a_member(store, clock, store_url):
    VERP_ALICE = signed(store)
    for day in range(5):
        clock.at = MONDAY + day * DAY
        receive(store, VERP_ALICE, sample("postfix.eml"))
    for address in ("kim@example.net", "sam@example.net"):
        receive(store, tagged_verp(store, address), sample("exim.eml"))
    env = {**os.environ, "LISTKEEPER_STORE": store_url}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    shown = run("bounces", "members").stdout.splitlines()
    assert shown[0] == ("members: disabled at 5; hard +1, soft +0.5, once a day; stale after 7 day(s) without "
                        "a bounce")
    assert shown[1].split() == ["address", "score", "last", "bounce", "hard", "soft", "state"]
    assert shown[2].split() == ["alice@example.net", "5", "2026-11-27", "09:00", "5", "0", "disabled"]
    assert [line.split()[0] for line in shown[3:]] == ["kim@example.net", "sam@example.net"]
    history = run("bounces", "members", "--member", "alice@example.net").stdout.splitlines()
    assert len(history) == 5 and history[0].startswith("2026-11-27 09:00  hard  counted  verp: 5.0.0 smtp; 550")
    enabled = run("members", "enable", "members", "alice@example.net")
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.strip() == "alice@example.net: delivery of members enabled again; bounce score cleared."
    alice = member(store, "alice@example.net")
    assert (alice.state, alice.bounce_score) == ("active", 0)
    again = run("members", "enable", "members", "alice@example.net")
    assert again.returncode == 1 and "is active on members, not disabled" in again.stderr
    assert "not a member" in run("members", "enable", "members", "eve@example.net").stderr


# --- the engine end to end -----------------------------------------------------------------------------

def outbox(tmp_path: Path) -> list:
    folder = tmp_path / "outbox"
    return [message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))] if folder.exists() else []


@pytest.fixture
async def engine(conf, store_url, clock):
    (conf / "lists.yaml").write_text(LIST.replace("  type: discussion\n",
                                                  "  type: discussion\n  bounces: {threshold: 2}\n"
                                                  "  digest: {schedule: never}\n"))
    opened = Store.open(store_url, clock=clock)
    reconcile(load_manifests([conf]), opened)
    started = await start_engine(opened, ServeOptions(port=0, http_port=0, housekeeping_interval=0.1))
    yield started
    await started.stop()
    opened.close()


def post_from_bob(subject: str) -> bytes:
    return (f"From: bob@example.net\r\nTo: members@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.net>\r\n\r\nHello.\r\n").encode()


async def test_bounces_over_smtp_disable_a_subscriber(tmp_path, engine, clock):
    await send(engine.port, "bob@example.net", ["members@example.org"], post_from_bob("First post"))
    copies = await wait_for(lambda: [m for m in outbox(tmp_path) if m["Subject"] == "First post"] if len(
        outbox(tmp_path)) == 3 else None)
    return_paths = {m["Delivered-To"]: m["Return-Path"] for m in copies}
    store = engine.store
    tagged = signed(store)
    assert return_paths["alice@example.net"] == f"<{tagged}>" and tagged.startswith(VERP_ALICE.partition("@")[0])

    async def bounce_arrives(name: str, count: int, to: str = tagged):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False) as smtp:
            await smtp.mail("")  # a bounce has the null sender: MAIL FROM:<>
            await smtp.rcpt(to)
            reply = await smtp.data(sample(name))
        assert reply.code == 250
        await wait_for(lambda: len(recorded(store)) == count)

    await bounce_arrives("postfix.eml", 1, VERP_ALICE)  # forged: no tag; alice's copy left tagged
    assert recorded(store) == [("alice@example.net", HARD, 0)]
    await bounce_arrives("postfix.eml", 2)
    await bounce_arrives("office365.eml", 3)  # the same day: not counted
    assert recorded(store) == [("alice@example.net", HARD, 0), ("alice@example.net", HARD, 1),
                               ("alice@example.net", HARD, 0)]
    assert member(store, "alice@example.net").state == "active"
    clock.at += DAY
    await bounce_arrives("postfix.eml", 4, tagged.replace("alice=", "bob="))  # alice's tag, for bob
    clock.at += DAY
    await bounce_arrives("gmail.eml", 5)
    await wait_for(lambda: member(store, "alice@example.net").state == "disabled")
    notice = await wait_for(lambda: [m for m in outbox(tmp_path) if "too many bounces" in (m["Subject"] or "")])
    assert [m["Delivered-To"] for m in notice] == ["chair@example.org"]
    await send(engine.port, "bob@example.net", ["members@example.org"], post_from_bob("Second post"))
    await wait_for(lambda: len(outbox(tmp_path)) == 6)
    second = [m for m in outbox(tmp_path) if m["Subject"] == "Second post"]
    assert sorted(m["Delivered-To"] for m in second) == ["bob@example.net", "kim@example.net"]
    # never answered: nothing went to the bounces' senders
    assert {m["Delivered-To"] for m in outbox(tmp_path)} == {"alice@example.net", "bob@example.net",
                                                             "kim@example.net", "chair@example.org"}


async def test_our_own_delivery_reports_count_the_same_way(tmp_path, sink, engine_for):
    engine = await engine_for(relay_config(tmp_path, sink.port, ["perm@example.net", "ok@example.net"]),
                              housekeeping_interval=0.1)
    await relay_post(engine, "Report me")  # the relay refuses perm@ with 550 5.1.1: our DSN goes to its VERP
    await wait_for(lambda: recorded(engine.store) == [("perm@example.net", HARD, 1)])
    with engine.store.engine.connect() as conn:
        detail, message_id = conn.execute(select(bounces.c.detail, bounces.c.message_id)).one()
        kept = conn.execute(select(messages.c.mail_from, messages.c.state, messages.c.recipients)
                            .where(messages.c.id == message_id)).one()
    assert detail.startswith("verp: 5.1.1 smtp; 550 5.1.1 No such user here")
    perm, ok = signed(engine.store, "perm@example.net"), signed(engine.store, "ok@example.net")
    assert kept.state == "bounce-done" and json.loads(kept.recipients) == [perm]
    assert member(engine.store, "perm@example.net").bounce_score == 1
    assert [(r.mail_from, r.rcpts) for r in sink.received] == [(ok, ["ok@example.net"])]  # MAIL FROM is tagged
    assert ok.startswith("members-bounces+ok=example.net+") and ok.endswith("@example.org")
