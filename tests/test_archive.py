"""The list archive end to end: posts over SMTP, the housekeeping round writes them to a Maildir or an
mbox, a repeat after a crash writes nothing twice, and `listkeeper archive LIST` lists them."""

from __future__ import annotations

import mailbox
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from listkeeper.engine.archive import write_mbox
from listkeeper.engine.housekeeping import run_round
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.store import archive as store_archive
from listkeeper.store.tables import archive_pending, messages

from .conftest import DOMAIN, pickup_routes, wait_for, write
from .test_serve import send

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subject_prefix: "[members]"
  archive: {path: ARCHIVE/members}
  subscribers:
    - address: alice@example.org
    - address: bob@example.net
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: board}
spec:
  address: board@example.org
  type: moderated
  archive: {format: mbox, path: ARCHIVE/board.mbox}
  subscribers:
    - address: chair@example.org
      roles: [moderator, regular]
    - address: alice@example.org
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: private}
spec:
  address: private@example.org
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


def post(sender: str, to: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}").encode()


def pickups(tmp_path: Path) -> int:
    folder = tmp_path / "outbox"
    return len(list(folder.glob("*.eml"))) if folder.exists() else 0


def maildir(path: Path) -> list:
    box = mailbox.Maildir(path, create=False)
    return [box[key] for key in sorted(box.keys())]


async def test_posts_are_archived_in_a_maildir(tmp_path, conf, engine_for):
    engine = await engine_for(conf, housekeeping_interval=3600)
    store = engine.store
    for sender, subject in (("alice@example.org", "First"), ("bob@example.net", "Second"),
                            ("alice@example.org", "From the start")):
        body = "From the start, a line that an mbox would quote.\r\n" if subject == "From the start" else "Hello.\r\n"
        await send(engine.port, sender, ["members@example.org"], post(sender, "members@example.org", subject, body))
    await wait_for(lambda: pickups(tmp_path) == 6)
    assert not (tmp_path / "archive").exists()  # the SMTP path only records the post; the round writes it
    done = run_round(store, load_snapshot(store), store.now())
    assert done.failed == ()
    archived = maildir(tmp_path / "archive" / "members")
    assert [m["Subject"] for m in archived] == ["[members] First", "[members] Second", "[members] From the start"]
    assert [m["List-Id"] for m in archived] == ["<members.example.org>"] * 3  # the post as distributed
    assert archived[2].get_payload() == "From the start, a line that an mbox would quote.\n"
    with store.engine.connect() as conn:
        assert store_archive.pending_count(conn, "members") == 0
        assert store_archive.progress(conn, "members").archived == 3
    assert not os.listdir(tmp_path / "archive" / "members" / "tmp")

    # a crash after the files were written but before the round was recorded: the posts are pending again
    with store.engine.begin() as conn:
        ids = conn.execute(select(messages.c.id).where(messages.c.list_name == "members",
                                                       messages.c.kind == "post")).scalars().all()
        conn.execute(insert(archive_pending), [dict(list_name="members", message_id=i, added_at=0.0) for i in ids])
    # and a reader has meanwhile moved one to cur/ (as a mail client does)
    box = mailbox.Maildir(tmp_path / "archive" / "members", create=False)
    first = sorted(box.keys())[0]
    seen = box[first]
    seen.set_subdir("cur")
    seen.add_flag("S")
    box[first] = seen
    assert run_round(store, load_snapshot(store), store.now()).failed == ()
    assert len(maildir(tmp_path / "archive" / "members")) == 3  # nothing written twice
    with store.engine.connect() as conn:
        assert store_archive.pending_count(conn, "members") == 0
        assert store_archive.progress(conn, "members").archived == 3


async def test_mbox_archive_held_posts_and_a_torn_write(tmp_path, conf, engine_for):
    from listkeeper.engine import moderation
    engine = await engine_for(conf, housekeeping_interval=3600)
    store = engine.store
    path = tmp_path / "archive" / "board.mbox"
    await send(engine.port, "chair@example.org", ["board@example.org"],
               post("chair@example.org", "board@example.org", "Agenda"))
    await send(engine.port, "alice@example.org", ["board@example.org"],
               post("alice@example.org", "board@example.org", "Held question"))  # held for the moderators
    await wait_for(lambda: pickups(tmp_path) == 3)  # Agenda to two members; the notice to the chair
    run_round(store, load_snapshot(store), store.now())
    assert [m["Subject"] for m in mailbox.mbox(path)] == ["Agenda"]

    with store.engine.begin() as conn:  # approved later: archived then
        (hold,) = moderation.pending(conn, "board")
        moderation.decide(conn, load_snapshot(store), hold["token"], "approve", "chair@example.org", store.now())
    run_round(store, load_snapshot(store), store.now())
    archived = list(mailbox.mbox(path))
    assert [m["Subject"] for m in archived] == ["Agenda", "Held question"]
    assert archived[1].get_from().startswith("alice@example.org ")
    recorded = path.stat().st_size

    # a round that wrote a post but died before recording it (and a torn tail): cut back, written once
    await send(engine.port, "chair@example.org", ["board@example.org"],
               post("chair@example.org", "board@example.org", "Minutes"))
    await wait_for(lambda: pickups(tmp_path) == 7)
    with store.engine.connect() as conn:
        ids = list(store_archive.pending_by_list(conn, 10)["board"])
        assert write_mbox(str(path), store_archive.posts(conn, ids), recorded)[0] == 1
    with open(path, "ab") as fh:
        fh.write(b"From torn@example.org Mon Nov 23 10:00:00 2026\nSubject: half a mess")
    run_round(store, load_snapshot(store), store.now())
    assert [m["Subject"] for m in mailbox.mbox(path)] == ["Agenda", "Held question", "Minutes"]
    with store.engine.connect() as conn:
        assert store_archive.progress(conn, "board") == store_archive.Progress(3, path.stat().st_size)


async def test_a_list_without_archive_keeps_nothing(tmp_path, conf, engine_for):
    engine = await engine_for(conf, housekeeping_interval=3600)
    store = engine.store
    await send(engine.port, "alice@example.org", ["private@example.org"],
               post("alice@example.org", "private@example.org", "Secret"))
    await wait_for(lambda: pickups(tmp_path) == 1)
    with store.engine.connect() as conn:
        assert store_archive.pending_count(conn, "private") == 1
    run_round(store, load_snapshot(store), store.now())
    with store.engine.connect() as conn:
        assert store_archive.pending_count(conn, "private") == 0
    assert not (tmp_path / "archive").exists()


async def test_archive_cli_and_default_location(tmp_path, engine_for, store_url):
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS.split("---")[0].replace("  archive: {path: ARCHIVE/members}\n", ""))
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(folder, housekeeping_interval=3600)
    env = {**os.environ, "LISTKEEPER_STORE": store_url}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path)

    empty = run("archive", "members")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == "members: 0 post(s) in var/archive/members (maildir).\n"
    for i, sender in enumerate(["alice@example.org", "bob@example.net", "alice@example.org"]):
        await send(engine.port, sender, ["members@example.org"],
                   post(f"Someone <{sender}>", "members@example.org", f"Post {i}"))
    await wait_for(lambda: pickups(tmp_path) == 6)
    waiting = run("archive", "members")
    assert waiting.stdout.splitlines()[-1].startswith("3 accepted post(s) not archived yet")
    ticked = run("tick")  # the housekeeping round, run from the operator's working directory
    assert ticked.returncode == 0, ticked.stderr
    assert len(maildir(tmp_path / "var" / "archive" / "members")) == 3

    listed = run("archive", "members", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "members: 3 post(s) in var/archive/members (maildir); the last 2:"
    assert lines[1].split() == ["2026-11-23", "09:00", "bob@example.net", "[members]", "Post", "1", "<Post.1@test>"]
    assert lines[2].split() == ["2026-11-23", "09:00", "alice@example.org", "[members]", "Post", "2", "<Post.2@test>"]
    assert len(lines) == 3
    missing = run("archive", "nope")
    assert missing.returncode == 1 and "no list 'nope' in the applied configuration" in missing.stderr


def test_two_lists_cannot_share_an_archive(tmp_path):
    write(tmp_path / "conf", "lists.yaml", DOMAIN + "---" + LISTS.replace("ARCHIVE/board.mbox", "shared")
          .replace("ARCHIVE/members", "shared"))
    with pytest.raises(ManifestErrors) as info:
        load_manifests([tmp_path / "conf"])
    (error,) = info.value.errors
    assert ": spec.archive.path: shared is already the archive of MailingList 'members' at " in str(error)
    assert str(error).startswith(f"{tmp_path / 'conf' / 'lists.yaml'}:24:")  # board's archive line


def test_rename_and_purge_of_a_list_carry_its_digest_and_archive_rows(store_url):
    from listkeeper.store import Store, config, queue
    from listkeeper.store.tables import digest_pending, resources
    store = Store.open(store_url)
    now = store.now()
    with store.engine.begin() as conn:
        conn.execute(insert(resources).values(kind="MailingList", name="old", spec="{}", hash="h", generation=1,
                                              source="x.yaml:1", applied_at=now))
        queue.spool(conn, [queue.InboundRecord("a@example.org", ("old@example.org",), b"m", 1, (
            queue.PostRecord("old", "queued", "member", b"c", "old-bounces@example.org", ("b@example.org",),
                             digest=True),))], now)
        config.rename(conn, "MailingList", "old", "new")
        for table in (digest_pending, archive_pending):
            assert conn.execute(select(table.c.list_name)).scalars().all() == ["new"]
        conn.execute(resources.update().where(resources.c.name == "new").values(deleted_at=now - 10))
        assert config.purge_deleted(conn, now) == ["new"]  # no row of these tables holds the posts back
        for table in (digest_pending, archive_pending):
            assert conn.execute(select(table)).all() == []
        assert conn.execute(select(messages).where(messages.c.kind == "post")).all() == []
    store.close()
