"""What the command line shows: tables that scripts can split, `queue wait`, progress bars that stay on
stderr, and one-line errors (no traceback) for an operator's mistakes. Real processes, real SQLite files."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listkeeper import terminal
from listkeeper.delivery.progress import PostProgress
from listkeeper.store import Store, queue
from listkeeper.terminal import Column

from .conftest import REPO
from .test_relay import free_port
from .test_serve_process import post, start

CLI = [sys.executable, "-m", "listkeeper"]


def run(url: str, *args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "LISTKEEPER_STORE": url})


# --- tables -------------------------------------------------------------------------------------------------

def test_a_table_in_a_pipe_is_plain_aligned_columns():
    shown = terminal.lines("Queue:", terminal.table([Column("state"), Column("deliveries", "right")],
                                                     [("deferred", 3), ("queued", 12)], indent=2))
    assert terminal.plain(shown) == "Queue:\n  state     deliveries\n  deferred           3\n  queued            12"


def test_a_long_cell_is_never_cut_in_a_pipe():
    address = "a" * 150 + "@example.org"
    assert terminal.plain(terminal.table([Column("subscriber"), Column("join", "right")], [(address, 1)])
                          ).splitlines()[1].split() == [address, "1"]


@pytest.mark.parametrize("counts, over, code", [
    ({}, False, 2),  # no deliveries yet (held for moderation, say): not over
    ({"delivered": 2, "deferred": 1}, False, 2),
    ({"delivered": 2, "suppressed": 1}, True, 0),  # suppressed is not a failure
    ({"delivered": 2, "failed": 1}, True, 1),
    ({"sending": 1, "failed": 1}, False, 2),
])
def test_when_a_post_is_over(counts, over, code):
    found = PostProgress(7, counts)
    assert (found.over, found.exit_code) == (over, code)


# --- queue wait ---------------------------------------------------------------------------------------------

def spool_post(url: str, recipients: tuple[str, ...]) -> int:
    store = Store.open(url)
    try:
        with store.engine.begin() as conn:
            (inbound,) = queue.spool(conn, [queue.InboundRecord("a@example.org", ("members@example.org",), b"raw", 1, (
                queue.PostRecord("members", "queued", "member", b"Subject: hi\r\n\r\nx\r\n",
                                 "members-bounces@example.org", recipients),))], 1000.0)
        return inbound
    finally:
        store.close()


def settle(url: str, outcomes: dict[str, tuple[str, str | None]]) -> None:
    """Claim whatever is due and record each recipient's outcome, as a delivery worker does."""
    store = Store.open(url)
    try:
        with store.engine.begin() as conn:
            due = queue.claim_due(conn, 10_000.0, 100, 60)
            queue.record_outcomes(conn, [queue.Outcome(d.delivery_id, outcomes[d.recipient][0], "relay:smarthost",
                                                       outcomes[d.recipient][1], 20_000.0)
                                         for d in due if d.recipient in outcomes], 1001.0)
    finally:
        store.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/lk.db"


def test_queue_wait_follows_the_post_until_it_is_over(url):
    spool_post(url, ("ok@example.net", "bad@example.net", "later@example.com"))
    settle(url, {"ok@example.net": ("delivered", None), "bad@example.net": ("failed", "550 5.1.1 no such user"),
                 "later@example.com": ("deferred", "451 busy")})
    waiting = subprocess.Popen(CLI + ["queue", "wait", "--interval", "0.05", "--timeout", "60"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "LISTKEEPER_STORE": url})
    try:
        time.sleep(1.5)
        assert waiting.poll() is None  # one delivery is still deferred: it waits
        with Store.open(url).engine.begin() as conn:  # the retry comes due
            conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = 0 WHERE state = 'deferred'")
        settle(url, {"later@example.com": ("delivered", None)})
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, err  # one failed
    assert out.splitlines() == ["post 2: 3 deliveries: 2 delivered, 1 failed; some failed.",
                                "  failed: bad@example.net: 550 5.1.1 no such user"]
    assert err == ""  # no terminal, no --progress: no bar


def test_queue_wait_exit_codes_and_clean_json_beside_a_forced_bar(url):
    spool_post(url, ("ok@example.net", "later@example.com"))
    settle(url, {"ok@example.net": ("delivered", None), "later@example.com": ("deferred", "451 busy")})
    late = run(url, "queue", "wait", "1", "--timeout", "0.3", "--interval", "0.05", "--output", "json", "--progress")
    assert late.returncode == 2
    doc = json.loads(late.stdout)  # the bar went to stderr: stdout is JSON alone
    assert doc == {"post": 1, "held": [], "moderation": {}, "by_state": {"deferred": 1, "delivered": 1}, "total": 2,
                   "over": False, "timed_out": True, "failed": []}
    assert "post 1" in late.stderr and "deliveries" in late.stderr
    text = run(url, "queue", "wait", "--timeout", "0")
    assert text.returncode == 2 and text.stdout.strip() == (
        "post 2: 2 deliveries: 1 deferred, 1 delivered; not over after 0 s.")
    with Store.open(url).engine.begin() as conn:
        conn.exec_driver_sql("UPDATE deliveries SET next_attempt_at = 0 WHERE state = 'deferred'")
    settle(url, {"later@example.com": ("delivered", None)})
    done = run(url, "queue", "wait", "2")
    assert done.returncode == 0 and done.stdout.strip() == "post 2: 2 deliveries: 2 delivered; all delivered."
    missing = run(url, "queue", "wait", "99")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: no post 99"


def test_queue_wait_on_an_empty_queue(url):
    empty = run(url, "queue", "wait")
    assert empty.returncode == 1 and empty.stderr.strip() == "Error: no post has been queued for delivery yet"


def spool_held_post(url: str) -> tuple[int, int]:
    """A post held for moderation as the fan-out spools it: the moderators' notice (queued), then the
    held copy (no deliveries until approved). Returns (inbound id, held copy id)."""
    store = Store.open(url)
    try:
        with store.engine.begin() as conn:
            (inbound, posts), = queue.spool_posts(conn, [queue.InboundRecord(
                "x@example.net", ("members@example.org",), b"raw", 1, (
                    queue.PostRecord("members", "queued", "moderation: notice to the moderators",
                                     b"Subject: held\r\n\r\nx", "members-bounces@example.org", ("mod@example.org",)),
                    queue.PostRecord("members", "held", "not_member: not a member", b"Subject: hi\r\n\r\nx\r\n",
                                     "members-bounces@example.org", (), verp=True,
                                     hold=queue.Hold("t0ken", "x@example.net", "hi", 9_999_999.0))))], 1003.0)
        return inbound, posts[-1][0]
    finally:
        store.close()


def test_queue_wait_says_the_newest_post_is_held_for_moderation(url):
    spool_post(url, ("ok@example.net",))  # an older post, delivered: not the one the user means
    settle(url, {"ok@example.net": ("delivered", None)})
    inbound, held = spool_held_post(url)
    started = time.monotonic()
    text = run(url, "queue", "wait", "--timeout", "30")
    assert time.monotonic() - started < 15  # no waiting for a moderator
    assert text.returncode == 3, text.stdout + text.stderr
    assert text.stdout.strip() == (f"post {held}: held for moderation by members; nothing to wait for until a "
                                   "moderator approves it (listkeeper moderation list members).")
    doc = json.loads(run(url, "queue", "wait", "--output", "json").stdout)
    assert doc == {"post": held, "held": ["members"], "moderation": {"members": "held"}, "by_state": {}, "total": 0,
                   "over": False, "timed_out": False, "failed": []}
    for named in (held, inbound):  # named by its id or the SMTP queue id: the same answer
        again = run(url, "queue", "wait", str(named), "--timeout", "30")
        assert again.returncode == 3 and "held for moderation by members" in again.stdout


@pytest.mark.parametrize("decision, said", [
    ("rejected", "rejected by the moderators of members"), ("discarded", "discarded by the moderators of members"),
    ("expired", "held for moderation by members and expired undecided")])
def test_queue_wait_says_a_post_moderation_stopped_will_not_be_delivered(url, decision, said):
    inbound, held = spool_held_post(url)
    settle(url, {"mod@example.org": ("delivered", None)})
    store = Store.open(url)
    with store.engine.begin() as conn:  # as moderation.decide / expire leave it: the copy's state, the
        conn.exec_driver_sql("UPDATE messages SET state = ? WHERE id = ?", (decision, held))
        if decision != "discarded":  # ... and a notice to the sender, whose parent is the copy
            queue.insert_posts(conn, [(held, 1, queue.PostRecord(
                "members", "queued", "moderation: notice to the sender", b"Subject: no\r\n\r\nx",
                "members-bounces@example.org", ("x@example.net",)))], 1004.0)
    store.close()
    settle(url, {"x@example.net": ("delivered", None)})
    for named in (None, held, inbound):  # the newest post is the stopped copy, not the notice about it
        started = time.monotonic()
        text = run(url, "queue", "wait", *([str(named)] if named else []), "--timeout", "30")
        assert time.monotonic() - started < 15
        assert text.returncode == 3, text.stdout + text.stderr
        assert text.stdout.strip() == f"post {held if named is None else named}: {said}; it will not be delivered."
    doc = json.loads(run(url, "queue", "wait", "--output", "json").stdout)
    assert doc["held"] == [] and doc["moderation"] == {"members": decision} and doc["total"] == 0


def test_queue_wait_on_a_cross_post_held_by_one_list_waits_for_the_other(url):
    store = Store.open(url)
    with store.engine.begin() as conn:
        (inbound,) = queue.spool(conn, [queue.InboundRecord("x@example.net", ("a@example.org", "b@example.org"),
                                                            b"raw", 1, (
            queue.PostRecord("a", "queued", "member", b"Subject: hi\r\n\r\nx\r\n", "a-bounces@example.org",
                             ("ok@example.net",)),
            queue.PostRecord("b", "queued", "moderation: notice to the moderators", b"Subject: held\r\n\r\nx",
                             "b-bounces@example.org", ("mod@example.org",)),
            queue.PostRecord("b", "held", "not_member: not a member", b"Subject: hi\r\n\r\nx\r\n",
                             "b-bounces@example.org", (), hold=queue.Hold("t0ken", "x@example.net", "hi", 9e6))))],
                                    1000.0)
    store.close()
    settle(url, {"ok@example.net": ("delivered", None), "mod@example.org": ("delivered", None)})
    done = run(url, "queue", "wait", str(inbound), "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"post {inbound}: 2 deliveries: 2 delivered; all delivered.",
                                        "  held for moderation by b (listkeeper moderation list b)"]


def test_queue_wait_against_a_serving_engine(tmp_path):
    for folder in ("lists.d", "routes.d"):
        (tmp_path / folder).mkdir()
        for item in (REPO / folder).glob("*.yaml"):
            (tmp_path / folder / item.name).write_text(item.read_text())
    port = free_port()
    proc = start(tmp_path, port)
    try:
        post(port, 1)
        done = run(f"sqlite:///{tmp_path}/var/listkeeper.db", "queue", "wait", "--timeout", "30", "--output", "json",
                   cwd=tmp_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["by_state"] == {"delivered": 4} and doc["over"] and len(list((tmp_path / "var/outbox").glob("*.eml"))) == 4


# --- progress bars stay on stderr ---------------------------------------------------------------------------

def test_tick_progress_goes_to_stderr_only(tmp_path, url):
    assert run(url, "reconcile", str(REPO / "examples/events.yaml"), str(REPO / "routes.d")).returncode == 0
    plain = run(url, "tick", "--at", "2030-01-01T00:00")
    assert plain.stdout.strip() == "newcomers/daily: fired for 2" and plain.stderr == ""
    barred = run(url, "tick", "--at", "2030-01-03T00:00", "--progress")
    assert barred.stdout.strip() == "newcomers/daily: fired for 2"  # the same machine output
    assert "subscriber events" in barred.stderr and "4/4" in barred.stderr  # 2 receiving x 2 events
    assert run(url, "tick", "--at", "2030-01-05T00:00", "--no-progress").stderr == ""


# --- errors: one line, exit 1, no traceback -----------------------------------------------------------------

def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("store, expected", [
    ("not a url", "Error: bad store URL 'not a url'"),
    ("postgresql+nosuch://u:s3cret@h/db", "Error: bad store URL 'postgresql+nosuch://u:***@h/db'"),
    ("mysql://u@h/db", "Error: bad store URL 'mysql://u@h/db': No module named"),
    ("postgresql://u:s3cret@h:notaport/db", "Error: bad store URL 'postgresql://u:***@h:notaport/db'"),
    ("postgresql://postgres:s3cret@127.0.0.1:1/x", "Error: cannot open store postgresql://postgres:***@127.0.0.1:1/x"),
    ("sqlite:////proc/no/such/lk.db", "Error: cannot open store sqlite:////proc/no/such/lk.db: cannot create the "
                                      "folder"),
    ("sqlite:///{tmp}/garbage.db", "Error: cannot open store sqlite:///{tmp}/garbage.db: file is not a database"),
])
@pytest.mark.parametrize("command", [("status",), ("members", "members")])
def test_a_bad_store_is_one_line(tmp_path, store, expected, command):
    (tmp_path / "garbage.db").write_bytes(b"this is not SQLite\n" * 100)
    store = store.format(tmp=tmp_path)
    line = one_line_error(run(store, *command, "--store", store))
    assert line.startswith(expected.format(tmp=tmp_path)) and "s3cret" not in line


def test_unreadable_manifests_name_the_file(tmp_path, url):
    (tmp_path / "latin1.yaml").write_bytes("kind: MailingList\nmetadata: {name: caf\xe9}\n".encode("latin-1"))
    for path, expected in [(tmp_path / "latin1.yaml", f"{tmp_path}/latin1.yaml:1:1: (document): cannot read file"),
                           (Path("/proc/self/mem"), "/proc/self/mem:1:1: (document): cannot read file"),
                           (tmp_path / "missing.yaml", "missing.yaml:1:1: (document): no such file")]:
        for command in (("validate",), ("reconcile", "--dry-run")):
            result = run(url, *command, str(path))
            assert result.returncode == 1 and "Traceback" not in result.stderr
            assert result.stderr.splitlines()[0].startswith(expected) or expected in result.stderr, result.stderr


def test_unreadable_rosters_are_one_line(tmp_path, url):
    assert run(url, "reconcile", str(REPO / "lists.d"), str(REPO / "routes.d")).returncode == 0
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x01\x02\n")
    assert "binary.csv: line 1: expected a header" in one_line_error(
        run(url, "members", "import", "members", str(tmp_path / "binary.csv")))
    assert one_line_error(run(url, "members", "import", "members", "/proc/self/mem")).startswith(
        "Error: cannot read /proc/self/mem: Input/output error")
    assert "Traceback" not in run(url, "members", "import", "members", str(tmp_path)).stderr  # a folder
    assert one_line_error(run(url, "members", "export", "members", str(tmp_path / "no/such/dir/x.csv"))).startswith(
        "Error: cannot write")


def test_unwritable_plan_file_is_one_line(tmp_path, url):
    line = one_line_error(run(url, "reconcile", str(REPO / "lists.d"), str(REPO / "routes.d"), "--dry-run",
                              "--out", str(tmp_path / "no/such/dir/plan.json")))
    assert line == f"Error: cannot write {tmp_path}/no/such/dir/plan.json: No such file or directory"


def test_queue_wait_defaults_to_the_newest_list_post_not_a_later_report(url):
    spool_post(url, ("ok@example.net",))  # inbound 1, its list copy 2
    store = Store.open(url)
    with store.engine.begin() as conn:  # then a report of the engine's own: no inbound message behind it
        (report,) = queue.insert_posts(conn, [(None, 1, queue.PostRecord(
            "", "queued", "report", b"Subject: report\r\n\r\nx\r\n", "postmaster@example.org",
            ("postmaster@example.org",)))], 1002.0)
    store.close()
    assert report == 3
    assert run(url, "queue", "wait", "--timeout", "0").stdout.startswith("post 2: 1 delivery: 1 queued;")
    assert run(url, "queue", "wait", "3", "--timeout", "0").stdout.startswith("post 3: 1 delivery: 1 queued;")


def test_import_progress_goes_to_stderr_only(tmp_path, url):
    assert run(url, "reconcile", str(REPO / "lists.d"), str(REPO / "routes.d")).returncode == 0
    (tmp_path / "roster.csv").write_text("address,name\n" + "".join(f"m{i}@example.net,M {i}\n" for i in range(300)))
    barred = run(url, "members", "import", "members", str(tmp_path / "roster.csv"), "--progress")
    assert barred.returncode == 0, barred.stderr
    assert barred.stdout.strip().endswith("into members: 300 added, 0 updated, 0 unchanged; 300 joined, 0 left.")
    assert "importing into members" in barred.stderr and "300 rows" in barred.stderr
    quiet = run(url, "members", "import", "members", str(tmp_path / "roster.csv"))  # no terminal: no bar
    assert quiet.stderr == "" and quiet.stdout.strip().endswith("nothing changed (300 unchanged).")


@pytest.mark.parametrize("cert, expected", [
    ("/proc/self/mem", "Error: cannot read the TLS certificate /proc/self/mem (or its key): Input/output error"),
    ("/dev/null", "Error: cannot use the TLS certificate /dev/null"),
])
def test_serve_says_a_certificate_it_cannot_read_is_the_trouble_not_the_port(tmp_path, cert, expected):
    """A key file serve may not read (a root-only privkey.pem, say) must not read as 'cannot listen on
    host:port', which sends the operator after the port."""
    for folder in ("lists.d", "routes.d"):
        (tmp_path / folder).mkdir()
        for item in (REPO / folder).glob("*.yaml"):
            (tmp_path / folder / item.name).write_text(item.read_text())
    result = subprocess.run(CLI + ["serve", "--port", str(free_port()), "--no-http", "--tls-cert", cert],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env={**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(expected), result.stderr
    assert "cannot listen" not in result.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_table_wider_than_the_terminal_keeps_every_column_and_every_address(monkeypatch):
    """On an 80-column terminal rich shortened the address and dropped whole columns (receives, state)
    of `members show`, without a word; the rules may go, the values may not."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "25")
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    address = "a-very-long-address.with.parts@subdomain.example-organisation.org"
    terminal.show(terminal.lines("1 receiving member(s) of 1:", terminal.table(
        [Column("address"), Column("roles"), Column("receives"), Column("state"), Column("source")],
        [(address, "member,moderator", "mime", "subscribed", "manifest:lists.d/x.yaml")], indent=2)))
    shown = out.getvalue()
    for text in (address, "member,moderator", "receives", "mime", "state", "subscribed", "manifest:lists.d/x.yaml"):
        assert text in shown, shown
    assert "…" not in shown
