"""reload: time from saving a list's file to the first SMTP session served with the new configuration.

`listkeeper serve` runs as a real process with `lists` lists (one file each) watched in lists.d/;
`clients` SMTP clients post to the lists without pause. One list's file is changed `changes` times,
its address moving on each time (list-7-v1@ -> list-7-v2@ ...); a probe opens session after session
and asks RCPT for the new address: the first session that accepts it ends the measurement. Every
posting session and every probe session must succeed (the probe's only allowed refusal is the old
"no such list" before the reload). The probe starts on each change only after the write, so the time
includes the watcher's debounce, validation of every manifest, the reconcile and the snapshot swap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiosmtplib

REPO = Path(__file__).resolve().parent.parent
SENDER = "poster@example.org"
CHANGED = 7  # the list whose file changes


def list_file(i: int, version: int = 0) -> str:
    address = f"list-{i}@example.org" if not version else f"list-{i}-v{version}@example.org"
    return f"""\
apiVersion: listkeeper/v1
kind: MailingList
metadata:
  name: list-{i}
spec:
  address: {address}
  type: discussion
  subject_prefix: "[list {i}]"
  subscribers:
    - address: {SENDER}
    - address: a{i}@example.net
    - address: b{i}@example.com
"""


def write_config(root: Path, lists: int) -> None:
    (root / "lists.d").mkdir(parents=True)
    (root / "routes.d").mkdir()
    (root / "lists.d" / "domain.yaml").write_text(
        "apiVersion: listkeeper/v1\nkind: Domain\nmetadata: {name: example-org}\n"
        "spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}\n")
    for i in range(lists):
        (root / "lists.d" / f"list-{i:05d}.yaml").write_text(list_file(i))
    (root / "routes.d" / "routes.yaml").write_text(
        "apiVersion: listkeeper/v1\nkind: RoutingTable\nmetadata: {name: default}\n"
        "spec:\n  routes:\n    - match: \"*\"\n      transport: discard\n")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(root: Path, port: int) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "--port", str(port), "--http-port", "0",
                             "--log-level", "info"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "LISTKEEPER_STORE": "", "PYTHONPATH": str(REPO / "src")})
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        for line in proc.stdout:
            log.append(line)
            if "listkeeper serving" in line:
                ready.set()
    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        sys.exit("serve did not start:\n" + "".join(log[-20:]))
    return proc, log


def message(to: str, n: int) -> bytes:
    return f"From: {SENDER}\r\nTo: {to}\r\nSubject: bench {n}\r\n\r\nA post.\r\n".encode()


class Load:
    """`clients` posters, each opening a session per post to one of the lists that do not change."""

    def __init__(self, port: int, clients: int, lists: int):
        self.port, self.clients = port, clients
        self.targets = [f"list-{i}@example.org" for i in range(min(lists, 100)) if i != CHANGED]
        self.sent = 0
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def poster(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            to = rng.choice(self.targets)
            try:
                await aiosmtplib.send(message(to, self.sent), sender=SENDER, recipients=[to], hostname="127.0.0.1",
                                      port=self.port, start_tls=False, timeout=60)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown
                self.failures.append(f"poster {n}: {exc!r}")

    def start(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self.poster(n)) for n in range(self.clients)]


async def first_session_with(port: int, address: str, failures: list[str], timeout: float = 30) -> float:
    """Open sessions until one accepts RCPT for `address`; returns the moment it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60) as client:
                await client.ehlo()
                await client.mail(SENDER)
                try:
                    await client.rcpt(address)
                    return time.monotonic()
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code != 550:
                        failures.append(f"probe: {exc!r}")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"probe: {exc!r}")
    raise SystemExit(f"{address} was not served within {timeout} s")


async def measure(root: Path, port: int, args) -> tuple[list[float], Load, list[str]]:
    load = Load(port, args.clients, args.lists)
    tasks = load.start()
    await asyncio.sleep(2.0)  # the load is running before the first change
    probe_failures: list[str] = []
    latencies = []
    path = root / "lists.d" / f"list-{CHANGED:05d}.yaml"
    for version in range(1, args.changes + 1):
        text = list_file(CHANGED, version)
        written = time.monotonic()
        path.write_text(text)
        served = await first_session_with(port, f"list-{CHANGED}-v{version}@example.org", probe_failures)
        latencies.append(served - written)
        await asyncio.sleep(random.uniform(0.3, 0.8))  # apart, so two changes are never one reload
    load.stop.set()
    await asyncio.gather(*tasks)
    return latencies, load, probe_failures


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench reload", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 1,000 lists, 50 clients, 50 changes")
    parser.add_argument("--lists", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    if args.full:
        args.lists, args.clients, args.changes = 1000, 50, 50
    with tempfile.TemporaryDirectory(prefix="lk-bench-reload-") as tmp:
        root = Path(tmp)
        write_config(root, args.lists)
        port = free_port()
        started = time.monotonic()
        proc, log = start_serve(root, port)
        print(f"serve started with {args.lists} lists in {time.monotonic() - started:.1f} s; "
              f"{args.clients} clients posting; {args.changes} changes of lists.d/list-{CHANGED:05d}.yaml")
        try:
            latencies, load, probe_failures = asyncio.run(measure(root, port, args))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        db = sqlite3.connect(root / "var" / "listkeeper.db")
        stored = db.execute("select count(*) from messages where kind = 'inbound'").fetchone()[0]
        generation = int(db.execute("select value from meta where key = 'generation'").fetchone()[0])
        db.close()
    failed = load.failures + probe_failures
    errors = [line for line in log if " ERROR " in line or "Traceback" in line]
    p50, p95 = statistics.median(latencies), percentile(latencies, 95)
    print(f"{'changes':<40}{len(latencies):>10}")
    print(f"{'posts accepted (all stored: checked)':<40}{load.sent:>10}")
    print(f"{'write -> first session served, p50 (s)':<40}{p50:>10.3f}")
    print(f"{'write -> first session served, p95 (s)':<40}{p95:>10.3f}")
    print(f"{'write -> first session served, max (s)':<40}{max(latencies):>10.3f}")
    print(f"{'failed sessions':<40}{len(failed):>10}")
    for line in (failed + errors)[:10]:
        print("  " + line.rstrip())
    print(json.dumps({"bench": "reload", "lists": args.lists, "clients": args.clients, "changes": args.changes,
                      "p50_s": round(p50, 3), "p95_s": round(p95, 3), "max_s": round(max(latencies), 3),
                      "failed_sessions": len(failed), "posts": load.sent, "generation": generation}))
    if stored < load.sent:
        sys.exit(f"only {stored} of {load.sent} accepted posts are in the store")
    if generation != 1 + args.changes:
        sys.exit(f"expected generation {1 + args.changes} after {args.changes} changes, the store has {generation}")
    if failed or errors:
        sys.exit(1)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
