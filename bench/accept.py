"""accept: messages accepted per second by `listkeeper serve`, against a bare aiosmtpd + fsync server.

Postfix's smtp-source posts N messages over S parallel sessions to a list with 10 subscribers;
in the same run the same load goes to bench/baseline_server.py. Every message accepted by
listkeeper must be in its store afterwards (checked), since 250 means durably stored.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENDER = "poster0@example.org"


def find_smtp_source() -> tuple[str, dict[str, str]]:
    """smtp-source from the PATH, or unpacked from Debian's postfix package into var/bench/."""
    for candidate in (shutil.which("smtp-source"), "/usr/sbin/smtp-source"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate, {}
    root = REPO / "var" / "bench" / "postfix"
    binary, libs = root / "usr/sbin/smtp-source", root / "usr/lib/postfix"
    if not binary.exists():
        print("smtp-source not found; unpacking Debian's postfix package into var/bench/postfix ...")
        root.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["apt-get", "download", "-q", "postfix"], cwd=root.parent, check=True,
                           capture_output=True)
            deb = sorted(root.parent.glob("postfix_*.deb"))[-1]
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        except (OSError, subprocess.CalledProcessError, IndexError) as exc:
            sys.exit(f"cannot find or install smtp-source ({exc}); install Debian's postfix package")
    return str(binary), {"LD_LIBRARY_PATH": str(libs)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, route: str) -> None:
    subs = "\n".join(f"    - address: member{i}@example.{'net' if i % 2 else 'com'}" for i in range(9))
    (folder / "lists.d").mkdir(parents=True)
    (folder / "routes.d").mkdir()
    (folder / "lists.d" / "bench.yaml").write_text(f"""\
apiVersion: listkeeper/v1
kind: Domain
metadata: {{name: example-org}}
spec: {{domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}}
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {{name: bench}}
spec:
  address: bench@example.org
  type: discussion
  subscribers:
    - address: {SENDER}
{subs}
""")
    target = "transport: discard" if route == "discard" else "transport: pickup\n      folder: var/outbox"
    (folder / "routes.d" / "routes.yaml").write_text(f"""\
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "*"
      {target}
""")


def wait_ready(proc: subprocess.Popen, marker: str, timeout: float = 30) -> None:
    """Wait for the marker line, then keep draining the output so the server never blocks on it."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if marker in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit(f"server did not start (waited for {marker!r})")


def load(smtp_source: str, env: dict, port: int, messages: int, sessions: int, size: int) -> float:
    cmd = [smtp_source, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-f", SENDER, "-t", "bench@example.org", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    result = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"smtp-source failed: {result.stderr.strip()}")
    return messages / elapsed


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_listkeeper(smtp_source, env, workdir: Path, args) -> tuple[float, float, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "--port", str(port), "--http-port", "0"],
                            cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LISTKEEPER_STORE": "", "PYTHONPATH": str(REPO / "src")})
    try:
        wait_ready(proc, "listkeeper serving")
        rate = load(smtp_source, env, port, args.messages, args.sessions, args.size)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    db = sqlite3.connect(workdir / "var" / "listkeeper.db")
    stored = db.execute("select count(*) from messages where kind='inbound'").fetchone()[0]
    db.close()
    return rate, rss, stored


def run_baseline(smtp_source, env, workdir: Path, args) -> tuple[float, int]:
    port = free_port()
    folder = workdir / "baseline"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "baseline_server.py"), str(port), str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(proc, "ready")
        rate = load(smtp_source, env, port, args.messages, args.sessions, args.size)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rate, len(list(folder.iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench accept", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 5,000 messages, 20 sessions, 3 rounds")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2000, help="body bytes per message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--route", choices=("discard", "pickup"), default="pickup",
                        help="where listkeeper delivers while accepting (pickup: one fsynced file each)")
    args = parser.parse_args()
    if args.full:
        args.messages, args.sessions = 5000, 20
    smtp_source, env = find_smtp_source()
    print(f"smtp-source: {smtp_source}; {args.messages} messages over {args.sessions} sessions, "
          f"{args.rounds} round(s), list of 10 subscribers, route {args.route}")
    ours, base, rss = [], [], []
    for round_no in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="lk-bench-", dir=REPO / "var" if (REPO / "var").exists() else None) as tmp:
            workdir = Path(tmp)
            write_config(workdir, args.route)
            if round_no % 2:  # alternate the order, so neither always runs on a cooler disk
                brate, bstored = run_baseline(smtp_source, env, workdir, args)
            rate, peak, stored = run_listkeeper(smtp_source, env, workdir, args)
            if stored != args.messages:
                sys.exit(f"listkeeper stored {stored} of {args.messages} accepted messages")
            if not round_no % 2:
                brate, bstored = run_baseline(smtp_source, env, workdir, args)
            if bstored != args.messages:
                sys.exit(f"baseline stored {bstored} of {args.messages} messages")
        ours.append(rate), base.append(brate), rss.append(peak)
        print(f"  round {round_no + 1}: listkeeper {rate:8.0f} msg/s   baseline {brate:8.0f} msg/s   "
              f"ratio {rate / brate:.2f}")
    rate, brate = statistics.median(ours), statistics.median(base)
    print()
    print(f"{'server':<34}{'msgs/s (median)':>16}")
    print(f"{'listkeeper serve':<34}{rate:>16.0f}")
    print(f"{'aiosmtpd + fsync per message':<34}{brate:>16.0f}")
    print(f"{'ratio':<34}{rate / brate:>16.2f}")
    print(json.dumps({"bench": "accept", "msgs_per_s": round(rate), "baseline_msgs_per_s": round(brate),
                      "ratio": round(rate / brate, 2), "peak_rss_mb": round(max(rss), 1),
                      "messages": args.messages, "sessions": args.sessions, "route": args.route}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
