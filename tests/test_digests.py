"""Digests: the pure decisions, validation, and the engine end to end over SMTP into a pickup folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import select

from listkeeper.engine.digests import due, issues, next_number, next_scheduled, period
from listkeeper.engine.housekeeping import run_round
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.digests import Digest, NewVolume
from listkeeper.store import digests as store_digests
from listkeeper.store.digests import Issue, Pending
from listkeeper.store.tables import digest_pending

from .conftest import DOMAIN, pickup_routes, tagged_verp, wait_for, write
from .test_serve import send

DAY = 86400.0


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# -- pure ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings,after,expected", [
    (Digest(), utc(2026, 11, 23, 6, 59), utc(2026, 11, 23, 7, 0)),
    (Digest(), utc(2026, 11, 23, 7, 0), utc(2026, 11, 24, 7, 0)),
    (Digest(schedule="30 6 * * mon-fri"), utc(2026, 11, 27, 12, 0), utc(2026, 11, 30, 6, 30)),  # Fri -> Mon
    (Digest(schedule="@weekly"), utc(2026, 11, 23, 12, 0), utc(2026, 11, 29, 0, 0)),
    # 07:00 in Berlin is 06:00 UTC in winter and 05:00 UTC in summer
    (Digest(timezone="Europe/Berlin"), utc(2026, 1, 10, 12, 0), utc(2026, 1, 11, 6, 0)),
    (Digest(timezone="Europe/Berlin"), utc(2026, 7, 10, 12, 0), utc(2026, 7, 11, 5, 0)),
    (Digest(schedule="never"), utc(2026, 1, 1), None),
])
def test_next_scheduled(settings, after, expected):
    assert next_scheduled(settings, after) == expected


@pytest.mark.parametrize("pending,now,expected", [
    (Pending("l", 0, 0, 0.0), utc(2030, 1, 1), None),
    (Pending("l", 2, 500, utc(2026, 11, 23, 8)), utc(2026, 11, 24, 6, 59), None),  # waits for 07:00
    (Pending("l", 2, 500, utc(2026, 11, 23, 8)), utc(2026, 11, 24, 7, 0), "schedule"),
    (Pending("l", 2, 500, utc(2026, 11, 23, 6)), utc(2026, 11, 23, 7, 1), "schedule"),
    (Pending("l", 9, 100_000, utc(2026, 11, 23, 8)), utc(2026, 11, 23, 8, 1), "size"),
])
def test_due(pending, now, expected):
    assert due(Digest(), pending, now) == expected


def test_a_quiet_list_does_not_send_at_once_when_a_post_arrives():
    # the last digest long ago does not matter: the oldest pending post decides
    assert due(Digest(), Pending("l", 1, 10, utc(2026, 11, 23, 12)), utc(2026, 11, 23, 12, 1)) is None


@pytest.mark.parametrize("posts,everything,expected", [
    ([(1, 400), (2, 400), (3, 400)], True, [[1, 2], [3]]),
    ([(1, 400), (2, 400), (3, 400)], False, [[1, 2]]),  # by size: what is left (400) waits
    ([(1, 2000), (2, 100)], True, [[1], [2]]),  # a post larger than max_size makes a digest of its own
    ([(1, 300), (2, 300)], False, []),
    ([(1, 300), (2, 300)], True, [[1, 2]]),
    ([(1, 1000), (2, 1000), (3, 10)], False, [[1], [2]]),
])
def test_posts_split_into_issues(posts, everything, expected):
    assert issues(posts, 1000, everything) == expected


@pytest.mark.parametrize("new_volume,moment,expected", [
    (NewVolume.yearly, datetime(2026, 11, 23), "2026"),
    (NewVolume.monthly, datetime(2026, 11, 23), "2026-11"),
    (NewVolume.weekly, datetime(2026, 11, 23), "2026-W48"),
    (NewVolume.never, datetime(2026, 11, 23), "-"),
])
def test_period(new_volume, moment, expected):
    assert period(new_volume, moment) == expected


def test_numbering():
    assert next_number(None, "2026-11") == (1, 1)
    last = Issue("l", 3, 7, "2026-11", 2, 100, "schedule", 0.0)
    assert next_number(last, "2026-11") == (3, 8)
    assert next_number(last, "2026-12") == (4, 1)


LIST = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: l}
spec:
  address: l@example.org
  type: discussion
"""


@pytest.mark.parametrize("extra,line,expected", [
    ("  digest: {schedule: '61 7 * * *'}\n", 12, "spec.digest.schedule: '61 7 * * *' is not a cron expression"),
    ("  digest: {schedule: '0 7 * *'}\n", 12, "spec.digest.schedule: '0 7 * *' is not a cron expression"),
    ("  digest:\n    schedule: '0 7 * * * 30'\n", 13, "spec.digest.schedule: '0 7 * * * 30' is not a cron expression"),
    ("  digest: {timezone: Mars/Olympus}\n", 12, "spec.digest.timezone: unknown time zone 'Mars/Olympus'"),
    ("  digest: {subject: '{list} #{number}'}\n", 12, "spec.digest.subject: unknown placeholder {number}"),
    ("  digest: {max_size: 10}\n", 12, "spec.digest.max_size: Input should be greater than or equal to 1024"),
])
def test_validation_errors(tmp_path, extra, line, expected):
    write(tmp_path / "conf", "l.yaml", DOMAIN + "---" + LIST + extra)
    with pytest.raises(ManifestErrors) as info:
        load_manifests([tmp_path / "conf"])
    found = [str(e) for e in info.value.errors]
    assert any(expected in e for e in found), found
    assert any(f"l.yaml:{line}:" in e for e in found), found


def test_validate_cli_reports_a_bad_cron_expression(tmp_path):
    path = write(tmp_path / "conf", "l.yaml", DOMAIN + "---" + LIST + "  digest:\n    schedule: every morning\n")
    done = subprocess.run([sys.executable, "-m", "listkeeper", "validate", str(path.parent)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert f"{path}:13:5: spec.digest.schedule: 'every morning' is not a cron expression" in done.stderr


# -- end to end ------------------------------------------------------------------------------------------

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subject_prefix: "[members]"
  digest: {schedule: "0 7 * * *", max_size: 6000}
  archive: {path: ARCHIVE/members}
  subscribers:
    - address: alice@example.org
    - address: bob@example.net
    - address: dan@example.com
      roles: [digest]
    - address: erin@example.com
      roles: [digest]
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: big}
spec:
  address: big@example.org
  type: discussion
  digest: {schedule: never, max_size: 6000, subject: "Big digest {volume}.{issue}"}
  archive: {enabled: false}
  subscribers:
    - address: alice@example.org
    - address: dan@example.com
      roles: [digest]
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: plain}
spec:
  address: plain@example.org
  type: discussion
  archive: {enabled: false}
  subscribers:
    - address: alice@example.org
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS.replace("ARCHIVE", str(tmp_path / "archive")))
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def outbox(tmp_path: Path) -> list:
    folder = tmp_path / "outbox"
    return [message_from_bytes(p.read_bytes(), policy=default) for p in sorted(folder.glob("*.eml"))] \
        if folder.exists() else []


def to(tmp_path: Path, address: str) -> list:
    return [m for m in outbox(tmp_path) if m["Delivered-To"] == address]


def post(sender: str, to_: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to_}\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@test>"
            f"\r\n\r\n{body}").encode()


def pending(store, list_name: str) -> list[int]:
    with store.engine.connect() as conn:
        return [i for i, _ in store_digests.pending_posts(conn, list_name)]


class Clock:
    """The engine's injected time: moved forward by the test, read by the spool, the rounds and delivery."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_scheduled_digest_goes_to_digest_members_only(tmp_path, conf, engine_for):
    engine = await engine_for(conf, housekeeping_interval=3600)
    store = engine.store
    store.clock = clock = Clock(time.time())
    for sender, subject in (("alice@example.org", "First"), ("bob@example.net", "Second")):
        await send(engine.port, sender, ["members@example.org"], post(sender, "members@example.org", subject))
    await wait_for(lambda: len(outbox(tmp_path)) == 4)  # alice and bob get each post; dan and erin do not
    assert Counter(m["Delivered-To"] for m in outbox(tmp_path)) == {"alice@example.org": 2, "bob@example.net": 2}
    assert len(pending(store, "members")) == 2
    seven = next_scheduled(Digest(), clock.now)

    clock.now = seven - 60
    early = run_round(store, load_snapshot(store), store.now())
    assert "digests.send" not in early.queued and len(pending(store, "members")) == 2
    clock.now = seven + 30
    done = run_round(store, load_snapshot(store), store.now())
    assert done.queued == {"digests.send": 1} and done.failed == ()
    await wait_for(lambda: len(outbox(tmp_path)) == 6)
    assert pending(store, "members") == []
    (digest,) = to(tmp_path, "dan@example.com")
    assert len(to(tmp_path, "erin@example.com")) == 1
    assert digest.get_content_type() == "multipart/digest"
    assert digest["Subject"] == "members digest, Vol 1, Issue 1"
    assert digest["List-Id"] == "<members.example.org>"
    assert digest["List-Post"] == "<mailto:members@example.org>"
    link, mailto = digest["List-Unsubscribe"].split(", ")  # the digest member's own one-click link
    assert link.startswith("<http://127.0.0.1:") and "/unsubscribe/" in link
    assert mailto == "<mailto:members-request@example.org?subject=unsubscribe>"
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert digest["From"] == "members-request@example.org" and digest["To"] == "members@example.org"
    assert digest["Return-Path"] == f"<{tagged_verp(store, 'dan@example.com')}>"  # tagged VERP, as posts
    toc, *parts = digest.iter_parts()
    assert toc.get_content_type() == "text/plain"
    text = toc.get_content()
    assert "  1. First (alice@example.org)" in text and "  2. Second (bob@example.net)" in text
    assert "'digest off' to members-request@example.org" in text
    assert [p.get_content_type() for p in parts] == ["message/rfc822", "message/rfc822"]
    embedded = [p.get_content() for p in parts]
    assert [m["Subject"] for m in embedded] == ["[members] First", "[members] Second"]
    assert [m["Message-ID"] for m in embedded] == ["<First@test>", "<Second@test>"]
    assert embedded[0].get_content() == "Hello.\r\n"

    # the next day's post is the next issue of the same volume (a new month would start volume 2)
    await send(engine.port, "alice@example.org", ["members@example.org"],
               post("alice@example.org", "members@example.org", "Third"))
    await wait_for(lambda: len(outbox(tmp_path)) == 8)
    assert run_round(store, load_snapshot(store), store.now()).queued == {}  # arrived after 07:00: waits
    next_day = next_scheduled(Digest(), store.now())
    assert next_day == seven + DAY
    clock.now = next_day + 30
    assert run_round(store, load_snapshot(store), store.now()).queued == {"digests.send": 1}
    await wait_for(lambda: len(to(tmp_path, "dan@example.com")) == 2)
    second = to(tmp_path, "dan@example.com")[1]
    volume_changes = period(NewVolume.monthly, datetime.fromtimestamp(next_day, timezone.utc)) != \
        period(NewVolume.monthly, datetime.fromtimestamp(seven, timezone.utc))
    assert second["Subject"] == ("members digest, Vol 2, Issue 1" if volume_changes else
                                 "members digest, Vol 1, Issue 2")
    assert len(list(second.iter_parts())) == 2


async def test_size_trigger_and_digest_send_by_cli(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf, housekeeping_interval=3600)
    store = engine.store
    body = ("x" * 70 + "\r\n") * 35  # about 2,500 bytes: two posts stay under 6,000, three pass it
    for i in range(3):
        await send(engine.port, "alice@example.org", ["big@example.org"],
                   post("alice@example.org", "big@example.org", f"Long {i}", body))
        if i == 1:
            assert run_round(store, load_snapshot(store), store.now()).queued == {}  # not yet
    await wait_for(lambda: len(to(tmp_path, "alice@example.org")) == 3)
    done = run_round(store, load_snapshot(store), store.now())
    assert done.queued == {"digests.send": 1}
    await wait_for(lambda: len(to(tmp_path, "dan@example.com")) == 1)
    (first,) = to(tmp_path, "dan@example.com")
    assert first["Subject"] == "Big digest 1.1"
    assert [p.get_content()["Subject"] for p in list(first.iter_parts())[1:]] == ["Long 0", "Long 1"]
    assert len(pending(store, "big")) == 1  # the rest waits: below max_size and no schedule

    env = {**os.environ, "LISTKEEPER_STORE": store_url}
    run = lambda *args: subprocess.run([sys.executable, "-m", "listkeeper", *args],  # noqa: E731
                                       capture_output=True, text=True, env=env, cwd=tmp_path)
    status = run("digest", "status", "big")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("big: 1 post(s), ") and "when the size is reached or by hand" in status.stdout
    assert "last: Vol 1, Issue 1 at " in status.stdout
    sent = run("digest", "send", "big")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("big: digest Vol 1, Issue 2 with 1 post(s), ")
    assert sent.stdout.rstrip().endswith("queued for 1 digest member(s)")
    await wait_for(lambda: len(to(tmp_path, "dan@example.com")) == 2)  # the running engine delivers it
    second = to(tmp_path, "dan@example.com")[1]
    assert second["Subject"] == "Big digest 1.2"
    assert [p.get_content()["Subject"] for p in list(second.iter_parts())[1:]] == ["Long 2"]
    again = run("digest", "send", "big")
    assert again.returncode == 0 and again.stdout.startswith("big: nothing sent")
    missing = run("digest", "send", "nope")
    assert missing.returncode == 1 and "no list 'nope' in the applied configuration" in missing.stderr


async def test_a_list_without_digest_members_drops_its_pending_posts(tmp_path, conf, engine_for):
    engine = await engine_for(conf, housekeeping_interval=3600)
    store = engine.store
    await send(engine.port, "alice@example.org", ["plain@example.org"],
               post("alice@example.org", "plain@example.org", "Solo"))
    await wait_for(lambda: len(outbox(tmp_path)) == 1)
    assert len(pending(store, "plain")) == 1
    assert run_round(store, load_snapshot(store), store.now()).queued == {}
    assert pending(store, "plain") == []
    with store.engine.connect() as conn:
        assert store_digests.last_issue(conn, "plain") is None


DIRECTORY = """
apiVersion: listkeeper/v1
kind: MemberDirectory
metadata: {name: team}
spec:
  source:
    csv: {path: CSV}
  fields:
    team: {type: string}
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: devs}
spec:
  address: devs@example.org
  type: discussion
  digest: {schedule: never}
  archive: {enabled: false}
  members:
    directory: team
    query:
      - {field: team, is: dev}
  subscribers:
    - address: dora@example.org
      roles: [digest]
    - address: dave@example.org
      roles: [digest]
"""


async def test_dynamic_list_digest_members_only_while_selected(tmp_path, engine_for, store_url):
    csv = tmp_path / "team.csv"
    csv.write_text("email,team\nann@example.org,dev\ndora@example.org,dev\ndave@example.org,ops\n"
                   "cy@example.org,dev\n", encoding="utf-8")
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "devs.yaml", DIRECTORY.replace("CSV", str(csv)))
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(folder, housekeeping_interval=3600)
    await send(engine.port, "ann@example.org", ["devs@example.org"],
               post("ann@example.org", "devs@example.org", "Standup"))
    # the selection (ann, cy, dora) minus dora, who chose the digest
    await wait_for(lambda: len(outbox(tmp_path)) == 2)
    assert sorted(m["Delivered-To"] for m in outbox(tmp_path)) == ["ann@example.org", "cy@example.org"]
    sent = subprocess.run([sys.executable, "-m", "listkeeper", "digest", "send", "devs"], capture_output=True,
                          text=True, env={**os.environ, "LISTKEEPER_STORE": store_url})
    assert sent.returncode == 0, sent.stderr
    assert "queued for 1 digest member(s)" in sent.stdout  # dora; dave is no longer selected (ops)
    await wait_for(lambda: len(outbox(tmp_path)) == 3)
    (digest,) = to(tmp_path, "dora@example.org")
    assert digest.get_content_type() == "multipart/digest"
    assert to(tmp_path, "dave@example.org") == []


async def test_approved_post_joins_the_digest(tmp_path, engine_for):
    from listkeeper.engine import moderation
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "club.yaml", """
        apiVersion: listkeeper/v1
        kind: MailingList
        metadata: {name: club}
        spec:
          address: club@example.org
          type: moderated
          digest: {schedule: never}
          archive: {enabled: false}
          subscribers:
            - address: chair@example.org
              roles: [moderator, regular]
            - address: alice@example.org
              roles: [digest]
        """)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(folder, housekeeping_interval=3600)
    store = engine.store
    await send(engine.port, "alice@example.org", ["club@example.org"],
               post("alice@example.org", "club@example.org", "Held one"))
    await wait_for(lambda: len(outbox(tmp_path)) == 1)  # the notice to the moderators
    assert pending(store, "club") == []
    with store.engine.begin() as conn:
        (hold,) = moderation.pending(conn, "club")
        moderation.decide(conn, load_snapshot(store), hold["token"], "approve", "chair@example.org", store.now())
        assert conn.execute(select(digest_pending.c.message_id)).scalars().all() == [hold["message_id"]]
    from listkeeper.engine.digests import send_now
    sent = send_now(store, load_snapshot(store), "club", store.now())
    assert [(i.volume, i.issue, i.posts, i.trigger) for i in sent.issues] == [(1, 1, 1, "hand")]
    await wait_for(lambda: len(to(tmp_path, "alice@example.org")) == 1)
    (digest,) = to(tmp_path, "alice@example.org")
    assert [p.get_content()["Subject"] for p in list(digest.iter_parts())[1:]] == ["Held one"]
