"""deliver: one post to many recipients over many domains, through the engine into Postfix's smtp-sink.

In the same run, the baseline: a bare aiosmtplib client sending the same number of pre-built
messages over the same number of reused connections to the same sink. Both use VERP-style
per-recipient envelopes. Prints messages per second, their ratio and the engine's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.accept import find_smtp_source, free_port, peak_rss_mb  # noqa: E402


def find_smtp_sink() -> tuple[str, dict[str, str]]:
    source, env = find_smtp_source()
    return str(Path(source).with_name("smtp-sink")), env


def start_sink(port: int) -> subprocess.Popen:
    binary, env = find_smtp_sink()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "1024"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"smtp-sink did not start: {proc.stderr.read().decode()}")


def recipients(count: int, domains: int) -> list[str]:
    return [f"user{i}@d{i % domains}.example" for i in range(count)]


def dkim_key(root: Path, arc: bool = False) -> str:
    """A fresh 2048-bit key for the Domain's `dkim:` block, as operators are told to make one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = root / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    sealing = ", arc: true" if arc else ""
    return f", dkim: {{selector: bench, key: {{file: {path}}}{sealing}}}"


def closed_udp_port() -> int:
    """Where --arc's inbound lookups go: nobody answers, at once (the post is still stamped and sealed)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root: Path, count: int, domains: int, sink_port: int, connections: int,
                 dkim: bool = False, arc: bool = False) -> None:
    (root / "lists.d").mkdir(parents=True)
    (root / "routes.d").mkdir()
    signing = dkim_key(root, arc) if dkim or arc else ""
    dns = f"  dns: {{nameservers: [{{address: 127.0.0.1, port: {closed_udp_port()}}}], timeout: 1s}}\n" if arc else ""
    with open(root / "lists.d" / "big.yaml", "w") as fh:
        fh.write("apiVersion: listkeeper/v1\nkind: Domain\nmetadata: {name: example-org}\n"
                 "spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org"
                 f"{signing}}}\n"
                 "---\napiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: big}\nspec:\n"
                 "  address: big@example.org\n  type: announce\n  subscribers:\n"
                 "    - address: chair@example.org\n      roles: [moderator]\n")
        for address in recipients(count, domains):
            fh.write(f"    - address: {address}\n")
    (root / "routes.d" / "routes.yaml").write_text(f"""\
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
  delivery:
    max_connections: {connections}
    per_destination: {connections}
    messages_per_connection: 10000
""" + dns)


BODY = ("From: chair@example.org\r\nTo: big@example.org\r\nSubject: Bench\r\nMessage-ID: <bench@example.org>\r\n\r\n"
        + "A line of a post body, as lists send them.\r\n" * 40)


def run_engine(root: Path, count: int, uvloop: bool) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{root}/store.db", "PYTHONPATH": str(REPO / "src")}
    args = [sys.executable, "-m", "listkeeper", "serve", "--port", str(port), "--http-port", "0",
            "--log-level", "warning"]
    if uvloop:
        args.append("--uvloop")
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "listkeeper serving" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            break
    else:
        sys.exit("serve did not start")
    import smtplib
    try:
        start = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port, timeout=600) as client:
            client.sendmail("chair@example.org", ["big@example.org"], BODY.encode())
        db = sqlite3.connect(root / "store.db")
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            (done,) = db.execute("select count(*) from deliveries where state in ('delivered','failed')").fetchone()
            if done >= count:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        (delivered,) = db.execute("select count(*) from deliveries where state='delivered'").fetchone()
        db.close()
        if delivered != count:
            sys.exit(f"engine delivered {delivered} of {count}")
        return count / elapsed, peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def baseline(port: int, count: int, domains: int, connections: int) -> float:
    import aiosmtplib
    body = BODY.encode()
    rcpts = recipients(count, domains)
    next_index = 0

    async def worker():
        nonlocal next_index
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench.test")
        await client.connect()
        while next_index < count:
            rcpt = rcpts[next_index]
            next_index += 1
            await client.sendmail(f"big-bounces+{rcpt.replace('@', '=')}@example.org", [rcpt], body)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench deliver", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 100,000 recipients, 1,000 domains")
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--domains", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--uvloop", action="store_true", help="run the engine and the baseline on uvloop")
    parser.add_argument("--dkim", action="store_true", help="the engine DKIM-signs every copy (2048-bit key)")
    parser.add_argument("--arc", action="store_true", help="and ARC-seals every copy (implies --dkim)")
    args = parser.parse_args()
    if args.full:
        args.recipients = 100_000
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="lk-bench-deliver-") as tmp:
            root = Path(tmp)
            write_config(root, args.recipients, args.domains, port, args.connections, args.dkim, args.arc)
            if args.uvloop:
                import uvloop
                base = uvloop.run(baseline(port, args.recipients, args.domains, args.connections))
            else:
                base = asyncio.run(baseline(port, args.recipients, args.domains, args.connections))
            rate, rss = run_engine(root, args.recipients, args.uvloop)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    loop = "uvloop" if args.uvloop else "asyncio"
    signed = ", DKIM-signed and ARC-sealed" if args.arc else ", DKIM-signed" if args.dkim else ""
    print(f"{args.recipients} recipients over {args.domains} domains, {args.connections} connections, {loop}{signed}")
    print(f"{'sender':<44}{'msgs/s':>10}")
    print(f"{'listkeeper (post → store → scheduler → relay)':<44}{rate:>10.0f}")
    print(f"{'bare aiosmtplib, pre-built messages':<44}{base:>10.0f}")
    print(f"{'ratio':<44}{rate / base:>10.2f}")
    print(f"{'engine peak memory (MB)':<44}{rss:>10.0f}")
    print(json.dumps({"bench": "deliver", "msgs_per_s": round(rate), "baseline_msgs_per_s": round(base),
                      "ratio": round(rate / base, 2), "peak_rss_mb": round(rss, 1), "recipients": args.recipients,
                      "domains": args.domains, "connections": args.connections, "loop": loop, "dkim": args.dkim or args.arc,
                      "arc": args.arc}))


if __name__ == "__main__":
    main()
