"""SIGKILL in the middle of a fan-out to 10,000 recipients: everyone gets the post, and only what was
in flight at the kill is sent twice."""

from __future__ import annotations

import os
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from .conftest import DOMAIN, write
from .smtpsink import free_port, start_sink

COUNT = 10_000


def start_serve(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{root}/store.db"}
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "conf", "--port", str(port),
                             "--http-port", "0", "--log-level", "warning"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "listkeeper serving" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("serve did not start")


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def write_fanout(tmp_path: Path, sink_port: int, count: int) -> None:
    """A list of `count` members delivered through a relay: the loopback sink."""
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    people = "".join(f"    - address: u{i}@d{i % 100}.example\n" for i in range(count))
    write(conf, "list.yaml", "apiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: big}\nspec:\n"
                             "  address: big@example.org\n  type: announce\n  subscribers:\n"
                             "    - address: chair@example.org\n      roles: [moderator]\n" + people)
    write(conf, "routes.yaml", f"""
apiVersion: listkeeper/v1
kind: Relay
metadata: {{name: sink}}
spec: {{host: 127.0.0.1, port: {sink_port}, tls: none}}
---
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "*"
      transport: relay
      relay: sink
  delivery: {{max_connections: 8, per_destination: 8}}
""")


def post_to_big(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("chair@example.org", ["big@example.org"],
                        b"From: chair@example.org\r\nSubject: Everyone\r\n\r\nHello all.\r\n")


def test_sigterm_mid_fanout_sends_nobody_the_post_twice(tmp_path):
    """A graceful stop in the middle of a fan-out over SMTP: the sends in flight finish and are recorded,
    what was claimed but not sent goes back to the queue at once (no lease to wait for), serve exits 0,
    and after a restart every member has the post exactly once."""
    count = 3000
    sink, controller = start_sink()
    try:
        write_fanout(tmp_path, controller.port, count)
        port = free_port()
        proc = start_serve(tmp_path, port)
        post_to_big(port)
        wait(lambda: len(sink.received) >= 500, 120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        db = sqlite3.connect(tmp_path / "store.db")
        states = dict(db.execute("select state, count(*) from deliveries group by state").fetchall())
        db.close()
        assert "sending" not in states, states
        assert 0 < states.get("delivered", 0) < count, "the stop must land in the middle of the fan-out"
        assert states["delivered"] == len(sink.rcpts()), "every send that happened is recorded as delivered"

        proc = start_serve(tmp_path, port)
        try:
            db = sqlite3.connect(tmp_path / "store.db")
            wait(lambda: db.execute("select count(*) from deliveries where state='delivered'").fetchone()[0]
                 == count, 300)
            db.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        got = Counter(r for item in sink.received for r in item.rcpts)
        assert len(got) == count
        assert max(got.values()) == 1, f"{sum(n > 1 for n in got.values())} members got the post twice"
    finally:
        controller.stop()


def test_sigkill_mid_fanout_resends_only_what_was_in_flight(tmp_path):
    sink, controller = start_sink()
    try:
        write_fanout(tmp_path, controller.port, COUNT)
        port = free_port()
        proc = start_serve(tmp_path, port)
        post_to_big(port)
        wait(lambda: len(sink.received) >= 2000, 120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(tmp_path / "store.db")
        in_flight = {r for (r,) in db.execute("select recipient from deliveries where state = 'sending'")}
        (delivered_before,) = db.execute("select count(*) from deliveries where state = 'delivered'").fetchone()
        db.close()
        assert 0 < delivered_before < COUNT, "the kill must land in the middle of the fan-out"

        proc = start_serve(tmp_path, port)
        try:
            db = sqlite3.connect(tmp_path / "store.db")
            wait(lambda: db.execute("select count(*) from deliveries where state='delivered'").fetchone()[0]
                 == COUNT, 300)
            db.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        got = Counter(r for item in sink.received for r in item.rcpts)
        assert set(got) == {f"u{i}@d{i % 100}.example" for i in range(COUNT)}
        twice = {r for r, n in got.items() if n > 1}
        assert max(got.values()) <= 2
        assert twice <= in_flight, f"{len(twice - in_flight)} sent twice that were not in flight"
    finally:
        controller.stop()
