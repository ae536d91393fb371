"""Two `listkeeper serve` processes on different loopback ports and one PostgreSQL store, delivering
into one pickup folder: posts accepted on either node reach every recipient exactly once, both nodes
do the work, and after a SIGKILL of one node in the middle of a fan-out the other finishes it."""

from __future__ import annotations

import os
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
from sqlalchemy import create_engine, text

from .conftest import DOMAIN, pg_database, pickup_routes, write
from .test_relay import free_port

BIG = 10_000
MEMBERS = [f"m{i}@example.net" for i in range(10)]
LEASE = "4"  # seconds: a killed node's deliveries pass to the other node after this


def serve(root: Path, url: str, node: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "conf", "--store", url, "--port", str(port),
                             "--no-http", "--node", node, "--lease", LEASE, "--no-watch", "--log-level", "warning"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LISTKEEPER_STORE": ""})
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "listkeeper serving" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, port
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"serve node {node} did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


def outbox(root: Path) -> list[Path]:
    folder = root / "outbox"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


@pytest.fixture
def cluster(tmp_path: Path):
    """The configuration, a fresh PostgreSQL database, and node a then node b serving from it."""
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    rows = "".join(f"\n    - address: {a}" for a in MEMBERS)
    write(conf, "members.yaml", "apiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: members}\nspec:\n"
                                "  address: members@example.org\n  type: discussion\n  subscribers:"
                                "\n    - address: poster@example.org\n      roles: [poster]" + rows + "\n")
    people = "".join(f"    - address: u{i}@d{i % 50}.example\n" for i in range(BIG))
    write(conf, "big.yaml", "apiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: big}\nspec:\n"
                            "  address: big@example.org\n  type: announce\n  subscribers:\n"
                            "    - address: chair@example.org\n      roles: [moderator]\n" + people)
    with pg_database() as url:
        nodes: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            nodes["a"] = serve(tmp_path, url, "a")
            nodes["b"] = serve(tmp_path, url, "b")
            yield tmp_path, url, nodes
        finally:
            for proc, _ in nodes.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def query(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def leader(url: str) -> str | None:
    """The node running the periodic work, as `listkeeper status` shows it."""
    done = subprocess.run([sys.executable, "-m", "listkeeper", "status", "--store", url], capture_output=True,
                          text=True, timeout=60)
    found = [line.rpartition(": ")[2] for line in done.stdout.splitlines() if line.strip().startswith("leader ")]
    return found[0] if found else None


def test_posts_on_either_node_reach_everyone_once_and_both_nodes_deliver(cluster):
    root, url, nodes = cluster
    for i in range(20):  # alternately to node a and node b, as two MX records share the senders
        _, port = nodes["ab"[i % 2]]
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("poster@example.org", ["members@example.org"],
                            f"From: poster@example.org\r\nSubject: p{i}\r\n\r\nbody {i}\r\n".encode())
    wait(lambda: len(outbox(root)) >= 20 * len(MEMBERS), 60, "every copy")
    time.sleep(1.5)  # a duplicate would show up now
    got = Counter((m["Delivered-To"], m["Subject"]) for m in (message_from_bytes(p.read_bytes()) for p in outbox(root)))
    assert got == Counter({(a, f"p{i}"): 1 for i in range(20) for a in MEMBERS})  # no subject prefix configured
    by_node = dict(query(url, "select claimed_by, count(*) from deliveries where state = 'delivered' group by 1"))
    assert set(by_node) == {"a", "b"} and sum(by_node.values()) == 20 * len(MEMBERS), by_node
    for proc, _ in nodes.values():
        stop(proc)
        assert proc.returncode == 0


def test_sigkill_of_a_node_mid_fanout_the_other_finishes_it_exactly_once(cluster):
    root, url, nodes = cluster
    killed, port = nodes["a"]
    assert wait(lambda: leader(url), 20, "a leader") == "a"  # the first node to start leads
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("chair@example.org", ["big@example.org"],
                        b"From: chair@example.org\r\nSubject: Everyone\r\n\r\nHello all.\r\n")
    wait(lambda: len(outbox(root)) >= 300, 120, "the fan-out to begin")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    states = dict(query(url, "select state, count(*) from deliveries group by 1"))
    assert states.get("delivered", 0) < BIG, f"the kill must land in the middle of the fan-out: {states}"
    orphaned = {r for (r,) in query(url, "select recipient from deliveries where state = 'sending' "
                                         "and claimed_by = 'a'")}

    assert wait(lambda: leader(url) == "b", 20, "node b to lead")  # events, digests, reports: on b now
    wait(lambda: time.sleep(0.2) or query(url, "select count(*) from deliveries where state = 'delivered'")[0][0] >= BIG,
         180,
         "node b to finish the fan-out")
    time.sleep(1.0)
    files = outbox(root)
    got = Counter(message_from_bytes(p.read_bytes())["Delivered-To"] for p in files)
    expected = {f"u{i}@d{i % 50}.example" for i in range(BIG)}  # the moderator of an announce list gets no copy
    assert set(got) == expected and set(got.values()) == {1} and len(files) == BIG
    # node b took over what node a had claimed and not finished: delivered, by b
    if orphaned:
        taken = dict(query(url, "select claimed_by, count(*) from deliveries where recipient in ("
                                + ",".join(f"'{r}'" for r in orphaned) + ") group by 1"))
        assert taken == {"b": len(orphaned)}
    print(f"killed with {len(orphaned)} deliveries leased to node a; states then: {states}")
    stop(nodes["b"][0])
    assert nodes["b"][0].returncode == 0
