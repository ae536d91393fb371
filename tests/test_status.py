"""`listkeeper status`: the rendering (golden) and the real command against a real `serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from listkeeper.engine.status import Outbox, Status, _utc, render_status
from listkeeper.store.config_history import ConfigChange, Origin
from listkeeper.store.nodes import Node

from .conftest import DOMAIN, pickup_routes, write
from .test_relay import free_port
from .test_reload import members

T = 1_795_000_000.0  # 2026-11-18 11:06:40 UTC


def test_status_text():
    status = Status(
        at=T + 100, generation=7,
        applied=ConfigChange(T, "applied", 7, Origin("mx1:25", "watch", ("lists.d", "routes.d")),
                             ("lists.d/members.yaml",), ("update MailingList/members",)),
        rejected=ConfigChange(T - 60, "rejected", 6, Origin("mx1:25", "sighup", ("lists.d", "routes.d")),
                              errors=("lists.d/members.yaml:6:3: spec.type: Input should be 'announce', "
                                      "'moderated' or 'discussion'",)),
        nodes=(Node("mx1:25", 7, T - 3600, T, T + 95, None, "smtp://0.0.0.0:25"),
               Node("mx2:25", 6, T - 3600, T - 60, T - 300, None, "smtp://0.0.0.0:25")),
        deliveries={"queued": 12, "deferred": 3}, held=2)
    assert render_status(status) == """\
Configuration: generation 7
  applied 2026-11-18 11:06:40 UTC by mx1:25 (watch) from lists.d, routes.d
  from files:
    lists.d/members.yaml
  changes:
    update MailingList/members

Engines:
  node    generation  loaded                   listening          state
  mx1:25           7  2026-11-18 11:06:40 UTC  smtp://0.0.0.0:25  running
  mx2:25           6  2026-11-18 11:05:40 UTC  smtp://0.0.0.0:25  silent since 7 min ago

Last rejected reload: 2026-11-18 11:05:40 UTC by mx1:25 (sighup) from lists.d, routes.d; kept generation 6; 1 error(s):
  lists.d/members.yaml:6:3: spec.type: Input should be 'announce', 'moderated' or 'discussion'
  (since then, generation 7 was applied)

Queue:
  state       deliveries
  deferred             3
  queued              12
  held posts           2

Notification outbox: empty."""


def test_an_empty_store():
    status = Status(T, 0, None, None, (), {}, 0)
    assert render_status(status).splitlines() == [
        "Configuration: generation 0", "", "Engines: none has run on this store.", "",
        "Last rejected reload: none.", "", "Queue:", "  state       deliveries", "  (empty)              0",
        "  held posts           0", "", "Notification outbox: empty."]


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listkeeper", *args], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "LISTKEEPER_STORE": f"sqlite:///{workdir}/var/lk.db"}, timeout=60)


def status(workdir: Path) -> dict:
    done = cli(workdir, "status", "--output", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_until(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {predicate}")


def test_sighup_reloads_a_serve_that_does_not_watch_and_status_shows_it(tmp_path):
    conf = tmp_path / "lists.d"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(tmp_path / "routes.d", "routes.yaml", pickup_routes(tmp_path / "outbox"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "--port", str(port), "--http-port", "0",
                             "--no-watch", "--node", "mx-test"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/var/lk.db"})
    log: list[str] = []
    reader = threading.Thread(target=lambda: [log.append(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("listkeeper serving" in line for line in log), 30)
        assert any("not watching (--no-watch) lists.d, routes.d" in line for line in log)
        write(conf, "members.yaml", members(["alice@example.org", "bob@example.net"]))
        time.sleep(1.0)
        assert status(tmp_path)["generation"] == 1  # not watching
        proc.send_signal(signal.SIGHUP)
        found = wait_until(lambda: (s := status(tmp_path))["nodes"][0]["generation"] == 2 and s)
        assert found["generation"] == 2
        assert found["applied"]["origin"] == {"origin": "mx-test", "trigger": "sighup",
                                              "paths": ["lists.d", "routes.d"]}
        assert found["applied"]["files"] == ["lists.d/members.yaml"]
        write(conf, "members.yaml", members(["alice@example.org"], kind="chat"))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: status(tmp_path)["rejected"])
        text = cli(tmp_path, "status").stdout
        assert "Configuration: generation 2\n  applied " in text
        assert " by mx-test (sighup) from lists.d, routes.d" in text
        assert "Last rejected reload: " in text and "kept generation 2; 1 error(s):\n  lists.d/members.yaml:6:3: " \
            "spec.type: Input should be 'announce', 'moderated' or 'discussion'" in text
        assert "mx-test" in text and f"smtp://127.0.0.1:{port}" in text and "running" in text
        assert any("reload.rejected" in line and "lists.d/members.yaml:6:3: spec.type" in line for line in log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "stopped" in cli(tmp_path, "status").stdout


def test_status_shows_the_notification_outbox_and_when_nobody_drains_it(tmp_path):
    """Events written by commands run by hand wait in the outbox until the leading engine drains them
    (every 2 s); an operator could not see them waiting, nor that no engine took them."""
    from listkeeper.store import Store
    from listkeeper.store import outbox
    (tmp_path / "var").mkdir()
    store = Store.open(f"sqlite:///{tmp_path}/var/lk.db")
    try:
        empty = cli(tmp_path, "status")
        assert empty.returncode == 0, empty.stderr
        assert "\nNotification outbox: empty.\n" in empty.stdout + "\n"
        assert status(tmp_path)["outbox"] == {"waiting": 0, "oldest": None}

        now = time.time()
        with store.engine.begin() as conn:
            outbox.add(conn, "e1", "event.fired", {"list": "members"}, now - 5)
            outbox.add(conn, "e2", "event.fired", {"list": "members"}, now - 2)
        fresh = cli(tmp_path, "status").stdout
        assert "Notification outbox: 2 event(s) waiting, oldest " in fresh and " s ago)." in fresh
        assert "no engine seems to be draining" not in fresh
        assert status(tmp_path)["outbox"] == {"waiting": 2, "oldest": now - 5}

        with store.engine.begin() as conn:
            outbox.add(conn, "e0", "event.fired", {"list": "members"}, now - 3600)
        stale = cli(tmp_path, "status").stdout.split("Notification outbox: ")[1].splitlines()
        assert stale[0] == f"3 event(s) waiting, oldest {_utc(now - 3600)} (60 min ago)."
        assert stale[1] == ("  waiting for more than a minute: no engine seems to be draining them (the leading "
                            "engine does every 2 s). Is `listkeeper serve` running on this store (on PostgreSQL: "
                            "is there a leader)?")
    finally:
        store.close()


def test_the_outbox_lines_name_the_leader_that_should_drain_it():
    found = Status(T + 600, 0, None, None, (), {}, 0, leader="mx1", outbox=Outbox(1, T))
    assert render_status(found).splitlines()[-2:] == [
        "Notification outbox: 1 event(s) waiting, oldest 2026-11-18 11:06:40 UTC (10 min ago).",
        "  waiting for more than a minute: no engine seems to be draining them (the leading engine does every "
        "2 s). Is the leader, mx1, stuck?"]
