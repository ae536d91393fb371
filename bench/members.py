"""members: stream a dynamic list's selection from a large SQLite directory into the delivery queue.

The engine's path: the query compiled by listkeeper, streamed into the fan-out's insert into the
store's deliveries table (one transaction, as when a post is accepted). The baseline, in the same
run: the same selection as hand-written SQL with the sqlite3 module, inserted with executemany
into a table of the same shape. Each side runs in a fresh process for its own peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIELDS = ["member_type", "country", "company", "joined", "receive_email", "role", "language", "plan",
          "seats", "city", "newsletter", "region"]
QUERY = [{"field": "member_type", "is": ["full", "associate"]}, {"field": "country", "is_not": ["XX"]},
         {"field": "joined", "before": "now-90d"}, {"field": "receive_email", "is": True}]
BASELINE_SQL = ("SELECT DISTINCT lower(trim(email)) FROM members WHERE email IS NOT NULL AND email != '' "
                "AND lower(member_type) IN ('full', 'associate') AND (country IS NULL OR lower(country) NOT IN ('xx')) "
                "AND joined < ? AND receive_email = 1")


def generate(path: Path, count: int) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE members (email TEXT, member_type TEXT, country TEXT, company TEXT, joined DATE, "
               "receive_email BOOLEAN, role TEXT, language TEXT, plan TEXT, seats INTEGER, city TEXT, "
               "newsletter BOOLEAN, region TEXT)")
    rnd = random.Random(7)
    start = date(2015, 1, 1)
    rows = ((f"member{i}@d{i % 5000}.example", rnd.choice(["full", "associate", "student", "honorary"]),
             rnd.choice(["NL", "DE", "US", "FR", "XX"]), f"company{rnd.randrange(20000)}",
             (start + timedelta(days=rnd.randrange(4000))).isoformat(), rnd.random() < 0.8,
             rnd.choice(["board", "staff", "member"]), rnd.choice(["en", "nl", "de"]), rnd.choice(["a", "b"]),
             rnd.randrange(100), f"city{rnd.randrange(500)}", rnd.random() < 0.5, rnd.choice(["n", "s", "e", "w"]))
            for i in range(count))
    db.executemany("INSERT INTO members VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


def directory_spec(path: Path) -> dict:
    types = {"joined": "date", "receive_email": "bool", "newsletter": "bool", "seats": "int"}
    return {"source": {"sql": {"url": f"sqlite:///{path}", "table": "members"}},
            "fields": {f: {"type": types.get(f, "string")} for f in FIELDS}}


def phase_engine(directory: Path, store: Path) -> dict:
    from datetime import datetime, timezone
    from listkeeper.manifests.directory import Criterion, MemberDirectorySpec
    from listkeeper.store import Store, directory as member_directory, queue
    spec = MemberDirectorySpec.model_validate(directory_spec(directory))
    query = tuple(Criterion.model_validate(c) for c in QUERY)
    s = Store.open(f"sqlite:///{store}")
    moment = datetime.now(timezone.utc)
    start = time.perf_counter()
    record = queue.InboundRecord("a@example.org", ("big@example.org",), b"raw", 1, (queue.PostRecord(
        "big", "queued", "member", b"copy", "big-bounces@example.org",
        lambda conn: member_directory.stream(spec, query, moment), verp=True),))
    with s.engine.begin() as conn:
        queue.spool(conn, [record], s.now())
    elapsed = time.perf_counter() - start
    with s.engine.connect() as conn:
        from sqlalchemy import text
        rows = conn.execute(text("select count(*) from deliveries")).scalar_one()
    s.close()
    return {"seconds": elapsed, "rows": rows}


def phase_baseline(directory: Path, store: Path) -> dict:
    cutoff = (date.today() - timedelta(days=90)).isoformat()
    out = sqlite3.connect(store)
    out.execute("PRAGMA journal_mode=WAL")
    out.execute("PRAGMA synchronous=FULL")
    out.execute("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, message_id INTEGER, recipient TEXT, "
                "return_path TEXT, state TEXT, attempts INTEGER, next_attempt_at REAL, lease_until REAL, "
                "transport TEXT, last_error TEXT, created_at REAL, updated_at REAL)")
    out.execute("CREATE INDEX ix_due ON deliveries (state, next_attempt_at)")
    out.execute("CREATE INDEX ix_msg ON deliveries (message_id)")
    now = time.time()
    start = time.perf_counter()
    src = sqlite3.connect(directory)
    cursor = src.execute(BASELINE_SQL, (cutoff,))
    while rows := cursor.fetchmany(5000):
        out.executemany("INSERT INTO deliveries (message_id, recipient, return_path, state, attempts, "
                        "next_attempt_at, created_at, updated_at) VALUES (1, ?, ?, 'queued', 0, ?, ?, ?)",
                        [(r, "big-bounces+" + r.replace("@", "=") + "@example.org", now, now, now) for (r,) in rows])
    out.commit()
    elapsed = time.perf_counter() - start
    count = out.execute("select count(*) from deliveries").fetchone()[0]
    return {"seconds": elapsed, "rows": count}


def run_phase(name: str, directory: Path, store: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--directory", str(directory),
                          "--store", str(store)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if out.returncode != 0:
        sys.exit(f"phase {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench members", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 1,000,000 members")
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = (phase_engine if args.phase == "engine" else phase_baseline)(Path(args.directory), Path(args.store))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if args.full:
        args.members = 1_000_000
    with tempfile.TemporaryDirectory(prefix="lk-bench-members-") as tmp:
        root = Path(tmp)
        generate(root / "directory.db", args.members)
        base = run_phase("baseline", root / "directory.db", root / "baseline.db")
        ours = run_phase("engine", root / "directory.db", root / "store.db")
    if base["rows"] != ours["rows"]:
        sys.exit(f"selections differ: engine {ours['rows']}, baseline {base['rows']}")
    ratio = ours["seconds"] / base["seconds"]
    print(f"{args.members} members, {ours['rows']} selected by 4 criteria")
    print(f"{'path':<52}{'seconds':>9}{'peak MB':>9}")
    print(f"{'listkeeper: compiled query streamed into the queue':<52}{ours['seconds']:>9.2f}{ours['peak_rss_mb']:>9.0f}")
    print(f"{'baseline: hand-written SQL + executemany':<52}{base['seconds']:>9.2f}{base['peak_rss_mb']:>9.0f}")
    print(f"{'ratio (time, lower is better)':<52}{ratio:>9.2f}")
    print(json.dumps({"bench": "members", "members": args.members, "selected": ours["rows"],
                      "seconds": round(ours["seconds"], 2), "baseline_seconds": round(base["seconds"], 2),
                      "ratio": round(ratio, 2), "peak_rss_mb": round(ours["peak_rss_mb"], 1),
                      "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1)}))


if __name__ == "__main__":
    main()
