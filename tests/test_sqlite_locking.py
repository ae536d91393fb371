"""SQLite and transactions that read, then write what they read decided (Store.writing).

Another connection (its own engine, as another process has) commits right after one of the path's
statements ran. Without the write lock that commit lands between the path's read and its write: the
write fails at once ("database is locked": the read snapshot cannot become a write) or acts on what
it read before the commit. Holding the write lock from the first statement, the other connection
waits for the path instead, and both succeed one after the other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import Connection

from listkeeper.engine import moderation
from listkeeper.engine.digests import send_now
from listkeeper.engine.events import fire_by_hand
from listkeeper.engine.housekeeping import JOBS, run_round
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.store import Store, refusals
from listkeeper.store import queue as store_queue
from listkeeper.store.tables import deliveries, digest_pending, digests, event_fires, holds, messages

from .conftest import DOMAIN, pickup_routes, reconcile_folder, write

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  digest: {schedule: "0 7 * * *", max_size: 6000}
  archive: {enabled: false}
  subscribers:
    - address: alice@example.org
    - address: bob@example.net
    - address: dan@example.com
      roles: [digest]
"""
WAIT = 0.5  # how long the path waits for the other commit; with the write lock held, that commit waits instead


def two_stores(tmp_path: Path, url: str, **manifests: str) -> Iterator[tuple[Store, Store]]:
    """The store the path runs on, and another one on the same database (another process's connection);
    `manifests` (file stem -> YAML) join the domain and the list."""
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    for stem, text in manifests.items():
        write(folder, f"{stem}.yaml", text)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    ours = reconcile_folder(folder, url)
    other = Store.open(url)
    yield ours, other
    other.close()
    ours.close()


@pytest.fixture
def stores(tmp_path: Path, store_url: str) -> Iterator[tuple[Store, Store]]:
    yield from two_stores(tmp_path, store_url)


@contextmanager
def commit_meanwhile(ours: Store, other: Store, after: str, work: Callable[[Connection], object]) -> Iterator[dict]:
    """Once a statement of ours containing `after` has run, `work` runs and commits on the other store."""
    done: dict = {}
    caller = threading.current_thread()
    threads: list[threading.Thread] = []

    def commit() -> None:
        try:
            with other.writing() as conn:
                done["result"] = work(conn)
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            done["error"] = exc

    def ran(conn, cursor, statement, parameters, context, executemany) -> None:
        if threads or threading.current_thread() is not caller or after not in statement:
            return
        threads.append(threading.Thread(target=commit))
        threads[0].start()
        threads[0].join(WAIT)

    event.listen(ours.engine, "after_cursor_execute", ran)
    try:
        yield done
    finally:
        event.remove(ours.engine, "after_cursor_execute", ran)
        for thread in threads:
            thread.join(60)
    assert threads, f"no statement containing {after!r} ran"
    assert "error" not in done, done.get("error")


def refusal(conn: Connection) -> None:
    """What the SMTP side commits at any moment."""
    refusals.record(conn, 1.0, "192.0.2.1", "spam@example.net", ["members@example.org"], "r", "r", "550 no")


def stored_post(store: Store) -> int:
    with store.engine.begin() as conn:
        return conn.execute(insert(messages).values(
            kind="post", state="held", list_name="members", mail_from="sender@example.net", recipients="[]",
            generation=1, size=30, data=b"Subject: hi\r\n\r\nHello.\r\n", created_at=1.0)).inserted_primary_key[0]


def test_an_event_fired_by_hand_waits_out_a_commit_made_after_it_chose(stores):
    ours, other = stores
    snapshot = load_snapshot(ours)
    with commit_meanwhile(ours, other, "INSERT INTO event_chosen", refusal):
        fired = fire_by_hand(ours, snapshot, "members", "join", None, 2000.0)
    assert fired.count == 3  # the digest member receives too
    with ours.engine.connect() as conn:
        assert len(conn.execute(select(event_fires).where(event_fires.c.at == 2000.0)).all()) == 3
        assert len(refusals.between(conn, 0.0, 10.0)) == 1


def test_an_expiry_and_an_approval_meeting_one_decision_stands(stores):
    """The expiry job read the hold as undecided; an approval committed before it wrote. Without the
    lock it overwrote the approval with 'expired' though the post was already distributed."""
    ours, other = stores
    snapshot = load_snapshot(ours)
    post_id = stored_post(ours)
    with ours.engine.begin() as conn:
        conn.execute(insert(holds).values(token="t1", message_id=post_id, list_name="members",
                                          sender="sender@example.net", subject="hi", reason="moderated",
                                          created_at=1.0, expires_at=2.0))

    def approve(conn: Connection) -> moderation.Outcome:
        outcome = moderation.decide(conn, snapshot, "t1", "approve", "cli", 5.0)
        store_queue.insert_posts(conn, [(post_id, snapshot.generation, p) for p in outcome.posts], 5.0)
        return outcome

    with commit_meanwhile(ours, other, "FROM holds", approve) as approval:
        assert run_round(ours, snapshot, 10.0, {"moderation.expire": JOBS["moderation.expire"]}).failed == ()
    with ours.engine.connect() as conn:
        decision = conn.execute(select(holds.c.decision).where(holds.c.token == "t1")).scalar_one()
        sent = conn.execute(select(deliveries.c.recipient).where(deliveries.c.message_id == post_id)).all()
    assert decision == "expired"
    assert "already expired" in approval["result"].text
    assert sent == []


def test_a_digest_sent_by_hand_and_the_round_make_one_issue(stores):
    """`digest send` read the pending posts; the round sent them as a digest meanwhile. Without the lock
    both made an issue of the same posts."""
    ours, other = stores
    snapshot = load_snapshot(ours)
    post_id = stored_post(ours)
    with ours.engine.begin() as conn:
        conn.execute(insert(digest_pending).values(list_name="members", message_id=post_id, size=30, added_at=1.0))

    def round_(conn: Connection) -> list:
        return list(JOBS["digests.send"](conn, snapshot, 10.0 ** 10) or ())

    with commit_meanwhile(ours, other, "FROM digest_pending", round_):
        sent = send_now(ours, snapshot, "members", 3.0)
    with ours.engine.connect() as conn:
        issues = conn.execute(select(digests.c.issue)).all()
    assert len(sent.issues) == 1
    assert len(issues) == 1
