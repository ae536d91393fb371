"""`listkeeper serve` as a real process on the repo's own manifests; a crash loses nothing."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest

from .conftest import REPO
from .test_relay import free_port

MEMBERS_REGULAR = {"alice@example.org", "bob@example.net", "dave@example.com", "chair@example.org"}


def start(workdir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "--port", str(port), "--http-port", "0"],
                            cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LISTKEEPER_STORE": ""})
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if "listkeeper serving" in line:  # then keep draining, so the server never blocks on its log
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("serve did not start")


def wait_outbox(folder: Path, count: int, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.eml")) if folder.exists() else []
        if len(files) >= count:
            time.sleep(0.2)  # anything more would be a duplicate; let it show up
            return sorted(folder.glob("*.eml"))
        time.sleep(0.05)
    raise AssertionError(f"outbox has {len(list(folder.glob('*.eml')))} of {count}")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for folder in ("lists.d", "routes.d"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def post(port: int, count: int, sender: str = "alice@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for i in range(count):
            data = f"From: {sender}\r\nTo: members@example.org\r\nSubject: n{i}\r\n\r\nbody {i}\r\n"
            client.sendmail(sender, ["members@example.org"], data.encode())


def test_quickstart_defaults_deliver_into_var_outbox(workdir):
    port = free_port()
    proc = start(workdir, port)
    try:
        post(port, 1)
        files = wait_outbox(workdir / "var" / "outbox", 4)
        assert Counter(message_from_bytes(p.read_bytes())["Delivered-To"] for p in files) == \
            Counter({a: 1 for a in MEMBERS_REGULAR})
        assert (workdir / "var" / "listkeeper.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_sigkill_after_250_loses_nothing_and_duplicates_nothing(workdir):
    port = free_port()
    proc = start(workdir, port)
    post(port, 40)
    proc.kill()  # right after the last 250: deliveries are still in flight
    proc.wait()
    proc = start(workdir, port)
    try:
        files = wait_outbox(workdir / "var" / "outbox", 40 * 4)
        assert len(files) == 160
        per_rcpt = Counter(message_from_bytes(p.read_bytes())["Delivered-To"] for p in files)
        assert per_rcpt == Counter({a: 40 for a in MEMBERS_REGULAR})
        subjects = Counter(message_from_bytes(p.read_bytes())["Subject"] for p in files)
        assert set(subjects.values()) == {4} and len(subjects) == 40
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_port_in_use_is_a_clear_error(workdir):
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "listkeeper", "serve", "--port", str(port),
                                 "--http-port", "0"], cwd=workdir, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_under_load_exits_cleanly_and_loses_nothing(workdir):
    """Clients post without pause; SIGTERM arrives mid-stream. serve stops accepting, exits 0 within a
    bound, and every post that got 250 reaches every member exactly once (after a restart at the latest)."""
    port = free_port()
    proc = start(workdir, port)
    accepted: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(200):  # bounded; the server going away ends it sooner
            subject = f"c{n}-{i}"
            data = f"From: alice@example.org\r\nTo: members@example.org\r\nSubject: {subject}\r\n\r\nx\r\n"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                    smtp.sendmail("alice@example.org", ["members@example.org"], data.encode())
            except (OSError, smtplib.SMTPException):
                return  # not acknowledged: a real client would retry later
            with lock:
                accepted.append(subject)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(accepted) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for t in threads:
        t.join(timeout=30)
    assert len(accepted) >= 20
    proc = start(workdir, port)  # what was not delivered before the stop is in the store
    try:
        files = wait_outbox(workdir / "var" / "outbox", len(accepted) * 4, timeout=60)
        subjects = Counter(message_from_bytes(p.read_bytes())["Subject"] for p in files)
        assert {s: subjects[f"[members] {s}"] for s in accepted} == {s: 4 for s in accepted}
        # nothing duplicated (a post stored just as the stop came may be delivered without its 250 having
        # reached the client: SMTP's usual at-least-once; it too goes to each member exactly once)
        assert set(subjects.values()) == {4}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
