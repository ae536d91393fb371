"""Two processes deciding the same thing at once, on SQLite and on PostgreSQL: exactly one wins.

On PostgreSQL Store.writing() is a plain READ COMMITTED transaction: what a path read may be decided
by another node's commit before the path writes. So the writes themselves say what they expect
(a hold still undecided, a pending post still pending) and the path acts only on what they changed.
As in test_sqlite_locking, another store commits right after one of the path's statements ran. On
SQLite that commit waits for the path's write lock (the path wins); on PostgreSQL it lands before the
path's write (the other wins)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from listkeeper.engine import moderation
from listkeeper.engine import digests as digests_engine
from listkeeper.engine.housekeeping import JOBS, run_round
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.notify import reports
from listkeeper.store import Store
from listkeeper.store import digests as store_digests
from listkeeper.store import queue as store_queue
from listkeeper.store.tables import deliveries, digest_pending, digests, holds, messages, report_runs

from .test_sqlite_locking import commit_meanwhile, stored_post, two_stores


@pytest.fixture
def stores(tmp_path: Path, db_url: str) -> Iterator[tuple[Store, Store]]:
    yield from two_stores(tmp_path, db_url)


def held(store: Store) -> int:
    post_id = stored_post(store)
    with store.engine.begin() as conn:
        conn.execute(insert(holds).values(token="t1", message_id=post_id, list_name="members",
                                          sender="sender@example.net", subject="hi", reason="moderated",
                                          created_at=1.0, expires_at=2.0))
    return post_id


def deciding(snapshot, post_id: int, decision: str, by: str):
    """A decision as `listkeeper moderation DECISION` makes it: the outcome's notices queued with it."""
    def work(conn: Connection) -> moderation.Outcome:
        outcome = moderation.decide(conn, snapshot, "t1", decision, by, 5.0)
        store_queue.insert_posts(conn, [(post_id, snapshot.generation, p) for p in outcome.posts], 5.0)
        return outcome
    return work


def path_wins(store: Store) -> bool:
    return store.engine.dialect.name == "sqlite"


def state(store: Store, post_id: int) -> tuple[str, str, str, list[str], int, int]:
    with store.engine.connect() as conn:
        hold = conn.execute(select(holds.c.decision, holds.c.decided_by).where(holds.c.token == "t1")).one()
        post = conn.execute(select(messages.c.state).where(messages.c.id == post_id)).scalar_one()
        sent = sorted(conn.execute(select(deliveries.c.recipient).where(deliveries.c.message_id == post_id))
                      .scalars())
        notices = conn.execute(select(func.count()).select_from(messages).where(messages.c.id != post_id)).scalar()
        in_digest = conn.execute(select(func.count()).select_from(digest_pending)).scalar()
    return hold.decision, hold.decided_by, post, sent, notices, in_digest


def test_an_expiry_and_an_approval_meeting_one_decision_stands(stores):
    """The expiry read the hold as undecided; an approval committed before the expiry wrote."""
    ours, other = stores
    snapshot = load_snapshot(ours)
    post_id = held(ours)
    with commit_meanwhile(ours, other, "FROM holds", deciding(snapshot, post_id, "approve", "cli")) as approval:
        assert run_round(ours, snapshot, 10.0, {"moderation.expire": JOBS["moderation.expire"]}).failed == ()
    decision, by, post, sent, notices, in_digest = state(ours, post_id)
    if path_wins(ours):
        assert (decision, by, post, sent, notices, in_digest) == ("expired", "expiry", "expired", [], 1, 0)
        assert "already expired (by expiry)" in approval["result"].text
    else:  # the sender is not told it expired, and the approval is not undone
        assert (decision, by, post, notices, in_digest) == ("approved", "cli", "queued", 0, 1)
        assert sent == ["alice@example.org", "bob@example.net"]
        assert "was approved" in approval["result"].text


def test_two_moderators_deciding_at_once_one_decision_stands(stores):
    """A moderator's reply read the hold as undecided; `moderation reject` committed before it wrote."""
    ours, other = stores
    snapshot = load_snapshot(ours)
    post_id = held(ours)
    with commit_meanwhile(ours, other, "FROM holds", deciding(snapshot, post_id, "reject", "cli")) as rejection:
        with ours.writing() as conn:
            approval = deciding(snapshot, post_id, "approve", "mod@example.org")(conn)
    decision, by, post, sent, notices, in_digest = state(ours, post_id)
    if path_wins(ours):
        assert (decision, by, post, notices, in_digest) == ("approved", "mod@example.org", "queued", 0, 1)
        assert sent == ["alice@example.org", "bob@example.net"]
        assert rejection["result"].text == ("The post held with token t1 was already approved (by "
                                            "mod@example.org); nothing happened.")
        assert rejection["result"].posts == ()
    else:  # the approval sends nothing: the sender was told of the rejection, and only that
        assert (decision, by, post, sent, notices, in_digest) == ("rejected", "cli", "rejected", [], 1, 0)
        assert approval.text == "The post held with token t1 was already rejected (by cli); nothing happened."
        assert approval.posts == ()


def pending_post(store: Store) -> int:
    post_id = stored_post(store)
    with store.engine.begin() as conn:
        conn.execute(insert(digest_pending).values(list_name="members", message_id=post_id, size=30, added_at=1.0))
    return post_id


def by_hand(conn: Connection, snapshot, now: float) -> list:
    """What `listkeeper digest send members` runs in its transaction."""
    sent = digests_engine.send(conn, snapshot, snapshot.lists["members@example.org"], now, "hand", everything=True)
    store_queue.insert_posts(conn, [(None, snapshot.generation, post) for _, post in sent], now)
    return [issue for issue, _ in sent]


def by_round(conn: Connection, snapshot, now: float) -> list:
    """What the housekeeping round's digest job runs in its transaction."""
    posts = list(JOBS["digests.send"](conn, snapshot, now) or ())
    store_queue.insert_posts(conn, [(None, snapshot.generation, post) for post in posts], now)
    return posts


@pytest.mark.parametrize("path, meanwhile", [(by_hand, by_round), (by_round, by_hand)])
def test_a_digest_sent_by_hand_and_by_the_round_at_once_is_one_issue(stores, path, meanwhile):
    """One sender read the pending posts; the other sent them as a digest before the first took them."""
    ours, other = stores
    snapshot = load_snapshot(ours)
    pending_post(ours)
    now = 10.0 ** 9  # past the schedule's first time after the post arrived

    with commit_meanwhile(ours, other, "FROM digest_pending", lambda conn: meanwhile(conn, snapshot, now)) as done:
        with ours.writing() as conn:
            ours_sent = path(conn, snapshot, now)
    with ours.engine.connect() as conn:
        issues = conn.execute(select(digests.c.volume, digests.c.issue, digests.c.trigger)).all()
        to_dan = conn.execute(select(func.count()).where(deliveries.c.recipient == "dan@example.com")).scalar()
        left = conn.execute(select(func.count()).select_from(digest_pending)).scalar()
    assert len(issues) == 1 and to_dan == 1 and left == 0
    assert len(ours_sent) + len(done["result"]) == 1
    # SQLite: the other waits for our write lock. PostgreSQL: the other sender waits for ours if we read
    # the posts under the list's sending lock; the round reads which lists are due before taking it
    winner = path if path_wins(ours) or path is by_hand else meanwhile
    assert issues[0].trigger == ("hand" if winner is by_hand else "schedule")


def test_a_pending_post_is_taken_once(stores):
    """Whatever else serialises the senders, two that read the same pending post take it once."""
    ours, other = stores
    post_id = pending_post(ours)

    def take(store: Store):
        return lambda conn: store_digests.take(conn, "members", [post_id])

    with commit_meanwhile(ours, other, "FROM digest_pending", take(other)) as meanwhile:
        with ours.writing() as conn:
            assert store_digests.pending_posts(conn, "members") == [(post_id, 30)]
            taken = take(ours)(conn)
    assert sorted([taken, meanwhile["result"]]) == [set(), {post_id}]
    assert taken == ({post_id} if path_wins(ours) else set())


def test_the_round_decides_a_digest_is_due_once_it_holds_the_list(stores):
    """The round read an old post as due by schedule; meanwhile `digest send` sent it and a new post
    arrived. Without deciding under the lock the round sent the new post as a 'schedule' issue, hours
    before its scheduled time."""
    ours, other = stores
    snapshot = load_snapshot(ours)
    pending_post(ours)
    now = 10.0 ** 9  # 01:46 UTC: the old post's 07:00 has come, the new one's has not

    def hand_then_a_post(conn: Connection) -> list:
        sent = by_hand(conn, snapshot, now)
        post_id = conn.execute(insert(messages).values(
            kind="post", state="queued", list_name="members", mail_from="sender@example.net", recipients="[]",
            generation=1, size=30, data=b"Subject: new\r\n\r\nHello.\r\n", created_at=now)
        ).inserted_primary_key[0]
        conn.execute(insert(digest_pending).values(list_name="members", message_id=post_id, size=30, added_at=now))
        return sent

    with commit_meanwhile(ours, other, "FROM digest_pending", hand_then_a_post) as done:
        with ours.writing() as conn:
            ours_sent = by_round(conn, snapshot, now)
    with ours.engine.connect() as conn:
        issues = conn.execute(select(digests.c.trigger)).scalars().all()
        left = conn.execute(select(func.count()).select_from(digest_pending)).scalar()
    assert left == 1  # the new post waits for its own scheduled time
    assert issues == ["schedule" if path_wins(ours) else "hand"]
    assert len(ours_sent) + len(done["result"]) == 1


REPORT = """
apiVersion: listkeeper/v1
kind: Report
metadata: {name: refused}
spec:
  type: barring
  schedule: "0 7 * * *"
  recipients: [ops@example.org]
"""


@pytest.fixture
def report_stores(tmp_path: Path, db_url: str) -> Iterator[tuple[Store, Store]]:
    yield from two_stores(tmp_path, db_url, reports=REPORT)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def report_by_hand(conn: Connection, snapshot, now: float) -> list[str]:
    """What `listkeeper report run refused` runs in its transaction: [] when it sent nothing."""
    try:
        _, post = reports.run_now(conn, snapshot, "refused", now)
    except reports.AlreadySent:
        return []
    store_queue.insert_posts(conn, [(None, snapshot.generation, post)], now)
    return ["hand"]


def report_by_round(conn: Connection, snapshot, now: float) -> list[str]:
    """What the housekeeping round's report job runs in its transaction (on this node or another)."""
    posts = list(JOBS["reports.send"](conn, snapshot, now) or ())
    store_queue.insert_posts(conn, [(None, snapshot.generation, post) for post in posts], now)
    return ["schedule"] * len(posts)


def report_state(store: Store) -> tuple[int, tuple]:
    with store.engine.connect() as conn:
        queued = conn.execute(select(func.count()).select_from(messages)
                              .where(messages.c.reason == "report refused")).scalar()
        run = tuple(conn.execute(select(report_runs.c.last_run_at, report_runs.c.trigger)).one())
    return queued, run


@pytest.mark.parametrize("path, meanwhile", [(report_by_hand, report_by_round), (report_by_round, report_by_hand),
                                             (report_by_round, report_by_round), (report_by_hand, report_by_hand)])
def test_a_report_period_is_sent_once(report_stores, path, meanwhile, caplog):
    """One run read the report's last run; another sent the period since then before the first recorded
    its own. Without the claim both queued a report of the same period."""
    caplog.set_level(logging.INFO, "listkeeper.reports")
    ours, other = report_stores
    snapshot = load_snapshot(ours)
    now = utc("2030-01-02T08:00")  # the 07:00 report since the last run is due
    with ours.engine.begin() as conn:
        conn.execute(insert(report_runs).values(name="refused", last_run_at=utc("2030-01-01T07:00"), rows=0,
                                                trigger="schedule"))
    with commit_meanwhile(ours, other, "FROM report_runs", lambda conn: meanwhile(conn, snapshot, now)) as done:
        with ours.writing() as conn:
            ours_sent = path(conn, snapshot, now)
    winner, loser = (ours_sent, done["result"]) if path_wins(ours) else (done["result"], ours_sent)
    assert len(winner) == 1 and loser == []
    assert report_state(ours) == (1, (now, winner[0]))
    if not path_wins(ours) and path is report_by_round:  # on SQLite the round just finds it not due
        assert "refused: the period from 2030-01-01T07:00:00+00:00 was already sent" in caplog.text


def test_a_report_first_seen_by_two_rounds_at_once_starts_once(report_stores):
    """Both rounds read no last run; one inserted the start while the other was about to. Without the
    claim the second insert failed that round's job (a unique violation on PostgreSQL)."""
    ours, other = report_stores
    snapshot = load_snapshot(ours)
    now = utc("2030-01-02T08:00")
    with commit_meanwhile(ours, other, "INTO report_runs", lambda conn: report_by_round(conn, snapshot, now)):
        assert run_round(ours, snapshot, now, {"reports.send": JOBS["reports.send"]}).failed == ()
    assert report_state(ours) == (0, (now, "start"))
