"""Operator commands on the delivery queue and the suppression list, against a real SQLite store and a
PostgreSQL one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from listkeeper.store import Store, queue

CLI = [sys.executable, "-m", "listkeeper"]


@pytest.fixture
def store_file(db_url: str) -> str:
    """A store (SQLite, then PostgreSQL) with three deliveries: delivered, failed, deferred."""
    url = db_url.replace("postgresql+psycopg://", "postgresql://")  # as operators write it
    store = Store.open(url)
    with store.engine.begin() as conn:
        (post,) = queue.spool(conn, [queue.InboundRecord("a@example.org", ("members@example.org",), b"raw", 1, (
            queue.PostRecord("members", "queued", "member", b"Subject: hi\r\n\r\nx\r\n", "members-bounces@example.org",
                             ("ok@example.net", "bad@example.net", "later@example.com"), verp=True),))], 1000.0)
        due = queue.claim_due(conn, 1000.0, 10, 60)
        queue.record_outcomes(conn, [
            queue.Outcome(due[0].delivery_id, "delivered", "relay:smarthost"),
            queue.Outcome(due[1].delivery_id, "failed", "relay:smarthost", "relay:25: 550 5.1.1 no such user"),
            queue.Outcome(due[2].delivery_id, "deferred", "relay:smarthost", "relay:25: 451 busy", 2000.0)], 1001.0)
    store.close()
    return url


def run(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True,
                          env={**os.environ, "LISTKEEPER_STORE": url})


def test_queue_counts_by_state_and_destination(store_file):
    out = run(store_file, "queue").stdout.splitlines()
    assert out[0].split() == ["state", "destination", "deliveries"]
    assert [line.split() for line in out[1:]] == [["deferred", "relay:smarthost", "1"],
                                                  ["delivered", "relay:smarthost", "1"],
                                                  ["failed", "relay:smarthost", "1"]]


def test_queue_show(store_file):
    out = run(store_file, "queue", "show", "2").stdout
    assert "recipient:    bad@example.net" in out
    assert "return path:  members-bounces+bad=example.net@example.org" in out
    assert "state:        failed" in out and "last error:   relay:25: 550 5.1.1 no such user" in out
    missing = run(store_file, "queue", "show", "99")
    assert missing.returncode == 1 and "no delivery 99" in missing.stderr


def test_queue_retry_failed_then_all_then_drop(store_file):
    assert run(store_file, "queue", "retry").stdout.strip() == "1 delivery queued again."
    assert run(store_file, "queue", "retry", "--all", "--post", "1").stdout.strip() == "2 deliveries queued again."
    assert [line.split() for line in run(store_file, "queue").stdout.splitlines()[1:]] == [
        ["queued", "relay:smarthost", "3"]]
    assert run(store_file, "queue", "drop", "3").stdout.strip() == "Delivery 3 dropped."
    assert run(store_file, "queue", "drop", "3").returncode == 1


def test_suppress_add_list_remove(store_file):
    assert run(store_file, "suppress", "add", "Spam@Example.net", "--reason", "complaint").stdout.strip() == \
        "Spam@Example.net: suppressed"
    assert run(store_file, "suppress", "add", "spam@example.net").stdout.strip() == "spam@example.net: already suppressed"
    assert run(store_file, "suppress", "list").stdout.strip() == "spam@example.net\tcomplaint"
    assert run(store_file, "suppress", "remove", "spam@example.net").stdout.strip() == "spam@example.net: removed"
    assert run(store_file, "suppress", "list").stdout.strip() == "No runtime suppressions."
