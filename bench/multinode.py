"""multinode: one post to many recipients on the PostgreSQL store, served by one node, then by two.

Each run gets a fresh database on the PostgreSQL server (default the test server of this machine) and
a fresh pickup folder. The post is sent to the first node; with two nodes both claim from the one
queue (SELECT ... FOR UPDATE SKIP LOCKED). Prints messages per second from the post to the last
delivery recorded, for one node and for two, and their ratio; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.accept import free_port  # noqa: E402
from bench.deliver import BODY, recipients  # noqa: E402


def write_config(root: Path, count: int, domains: int) -> None:
    (root / "conf").mkdir(parents=True)
    with open(root / "conf" / "big.yaml", "w") as fh:
        fh.write("apiVersion: listkeeper/v1\nkind: Domain\nmetadata: {name: example-org}\n"
                 "spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}\n"
                 "---\napiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: big}\nspec:\n"
                 "  address: big@example.org\n  type: announce\n  subscribers:\n"
                 "    - address: chair@example.org\n      roles: [moderator]\n")
        for address in recipients(count, domains):
            fh.write(f"    - address: {address}\n")
    (root / "conf" / "routes.yaml").write_text(f"""\
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {{name: default}}
spec:
  routes:
    - match: "*"
      transport: pickup
      folder: {root / "outbox"}
""")


class Database:
    """A database of its own on the server, dropped afterwards."""

    def __init__(self, admin: str):
        import psycopg
        self._psycopg = psycopg
        self._admin = admin
        self.name = f"lk_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        base = admin.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def count(self, sql: str) -> int:
        with self._psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchone()[0]

    def drop(self) -> None:
        with self._psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{self.name}" WITH (FORCE)')


def start_node(root: Path, url: str, name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "LISTKEEPER_STORE": "", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "conf", "--store", url, "--port", str(port),
                             "--no-http", "--no-watch", "--node", name, "--log-level", "warning"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "listkeeper serving" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, port
    sys.exit(f"serve node {name} did not start")


def run(admin: str, count: int, domains: int, nodes: int) -> dict:
    """One post through `nodes` engine nodes: seconds to the 250, to the last delivery, and who did what."""
    database = Database(admin)
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="lk-bench-multinode-") as tmp:
            root = Path(tmp)
            write_config(root, count, domains)
            ports = []
            for n in range(nodes):  # one after the other: the first reconciles, the others find no change
                proc, port = start_node(root, database.url.replace("postgresql://", "postgresql+psycopg://"),
                                        f"node{n + 1}")
                procs.append(proc)
                ports.append(port)
            time.sleep(1.0)  # every node's scheduler has made its first (empty) run
            start = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", ports[0], timeout=3600) as client:
                client.sendmail("chair@example.org", ["big@example.org"], BODY.encode())
            accepted = time.perf_counter() - start
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                if database.count("select count(*) from deliveries where state in ('delivered', 'failed')") >= count:
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - start
            delivered = database.count("select count(*) from deliveries where state = 'delivered'")
            if delivered != count:
                sys.exit(f"{nodes} node(s) delivered {delivered} of {count}")
            with __import__("psycopg").connect(database.url) as conn:
                shares = dict(conn.execute("select claimed_by, count(*) from deliveries group by 1").fetchall())
            stop(procs)  # before the folder goes
            files = len(list((root / "outbox").glob("*.eml")))
            if files != count:
                sys.exit(f"{nodes} node(s) wrote {files} files for {count} deliveries")
            return {"elapsed": elapsed, "accepted": accepted, "shares": shares}
    finally:
        stop(procs)
        database.drop()


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench multinode", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 100,000 recipients")
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--domains", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of each (one node, two nodes, alternately); the fastest of each counts, as "
                             "other work on a shared machine only ever slows a run down")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a database on the server to connect to while creating the bench's own")
    args = parser.parse_args()
    if args.full:
        args.recipients = 100_000
    ones, twos = [], []
    for _ in range(max(1, args.runs)):
        ones.append(run(args.pg, args.recipients, args.domains, 1))
        twos.append(run(args.pg, args.recipients, args.domains, 2))
    one = min(ones, key=lambda r: r["elapsed"])
    two = min(twos, key=lambda r: r["elapsed"])
    rate_one, rate_two = args.recipients / one["elapsed"], args.recipients / two["elapsed"]
    after_one = args.recipients / (one["elapsed"] - one["accepted"])
    after_two = args.recipients / (two["elapsed"] - two["accepted"])
    print(f"{args.recipients} recipients over {args.domains} domains, pickup folder, PostgreSQL store, "
          f"{os.cpu_count()} CPU(s), fastest of {len(ones)} run(s) each")
    print(f"{'nodes':<8}{'msgs/s':>10}{'after 250':>12}{'250 after s':>13}{'total s':>10}   deliveries per node")
    for label, r, rate, after in (("1", one, rate_one, after_one), ("2", two, rate_two, after_two)):
        shares = ", ".join(f"{k}: {v}" for k, v in sorted(r["shares"].items(), key=lambda kv: str(kv[0])))
        print(f"{label:<8}{rate:>10.0f}{after:>12.0f}{r['accepted']:>13.2f}{r['elapsed']:>10.2f}   {shares}")
    print(f"{'ratio':<8}{rate_two / rate_one:>10.2f}{after_two / after_one:>12.2f}")
    print(json.dumps({"bench": "multinode", "one_node_msgs_per_s": round(rate_one),
                      "two_nodes_msgs_per_s": round(rate_two), "ratio": round(rate_two / rate_one, 2),
                      "ratio_after_accept": round(after_two / after_one, 2), "recipients": args.recipients,
                      "domains": args.domains, "cpus": os.cpu_count(), "runs": len(ones)}))


if __name__ == "__main__":
    main()
