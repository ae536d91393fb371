"""events: one tick of list events over many subscribers, against one hand-written SQL statement.

A list of N subscribers with five user-defined events; 10% of the subscribers qualify, so the tick
fires two of the events for them and queues one template mail each. The baseline, in the same run, is
one hand-written SQL statement (sqlite3 module) that computes the same set: for each of the five
events, who it fires for in this tick, with the cascade a tick has (an event fired for someone
counts for the events that depend on it). A second, narrower baseline selects only the first event's
set, knowing beforehand that the other events fire for nobody or for the same people; it is printed
too. Each path runs three times (`--runs`) and the fastest counts; each tick starts from a copy of
the same database.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

EVENTS = """
  events:
    - name: flag
      depends: [{event: join, never: true}]
    - name: welcome
      depends: [{event: flag, at_least: 1}]
      template: {subject: "Welcome to {{ list.name }}", body: "Hello {{ subscriber.address }}, welcome."}
    - name: followup
      depends: [{event: welcome, at_least: 1}, {event: post, never: true}]
    - name: vip
      depends: [{event: flag, exactly: 2}]
    - name: lapsed
      depends: [{event: post, at_least: 3}]
      repeat: 7d
"""
ONE_EVENT = ("SELECT s.address FROM subscribers s JOIN event_counters f ON f.list_name = s.list_name "
             "AND f.address = s.address AND f.event = 'flag' WHERE s.list_name = 'big' AND f.count >= 1 "
             "AND NOT EXISTS (SELECT 1 FROM event_counters w WHERE w.list_name = s.list_name "
             "AND w.address = s.address AND w.event = 'welcome')")
# who each of the five events fires for now, as one statement: each event's rule over the counters as
# they stand, plus whom an event it depends on fires for in the same tick (flag before welcome before
# followup). `vip` needs flag exactly 2: flag fires only for who has no flag count, making it 1, so the
# counters as they stand decide it. Written for speed: the one set over all subscribers (flag: never
# joined) is a merge of address-ordered ranges, the others start from their smaller counter range and
# seek the rest; the receiving check reads the covering index.
_RECEIVES = ("EXISTS (SELECT 1 FROM subscribers s INDEXED BY ix_subscribers_receiving WHERE s.list_name = 'big' "
             "AND s.address = {a}.address AND s.state = 'active' AND s.receives != '')")


def _never(event: str, alias: str, condition: str = "count != 0") -> str:
    return (f"NOT EXISTS (SELECT 1 FROM event_counters x WHERE x.list_name = 'big' AND x.event = '{event}' "
            f"AND x.address = {alias}.address AND x.{condition})")


FIVE_EVENTS = f"""
WITH flag AS MATERIALIZED (
  SELECT address FROM subscribers WHERE list_name = 'big' AND state = 'active' AND receives != ''
  EXCEPT SELECT address FROM event_counters WHERE list_name = 'big' AND event = 'join' AND count != 0
  EXCEPT SELECT address FROM event_counters WHERE list_name = 'big' AND event = 'flag' AND count != 0
  ORDER BY 1),
welcome AS MATERIALIZED (
  SELECT f.address FROM event_counters f WHERE f.list_name = 'big' AND f.event = 'flag' AND f.count >= 1
    AND {_RECEIVES.format(a='f')} AND {_never('welcome', 'f')}
  UNION ALL SELECT flag.address FROM flag WHERE {_never('welcome', 'flag')})
SELECT 'flag', address FROM flag
UNION ALL SELECT 'welcome', address FROM welcome
UNION ALL SELECT 'followup', w.address FROM event_counters w
  WHERE w.list_name = 'big' AND w.event = 'welcome' AND w.count >= 1
    AND {_RECEIVES.format(a='w')} AND {_never('post', 'w')} AND {_never('followup', 'w')}
UNION ALL SELECT 'followup', w.address FROM welcome w WHERE {_never('post', 'w')} AND {_never('followup', 'w')}
UNION ALL SELECT 'vip', f.address FROM event_counters f WHERE f.list_name = 'big' AND f.event = 'flag' AND f.count = 2
    AND {_RECEIVES.format(a='f')} AND {_never('vip', 'f')}
UNION ALL SELECT 'lapsed', p.address FROM event_counters p WHERE p.list_name = 'big' AND p.event = 'post'
    AND p.count >= 3 AND {_RECEIVES.format(a='p')} AND {_never('lapsed', 'p', 'last_at > :now - 604800')}
"""


class time_statements:
    """SQL time of the tick by what the statement writes: where the whole tick's time goes."""

    PHASES = (("event_chosen", "choose who fires (5 statements)"),
              ("event_counters", "count the fires"), ("event_fires", "log the fires"),
              ("deliveries", "queue the mail + deliveries"),
              ("messages", "queue the mail + deliveries"))

    def __init__(self, engine):
        from sqlalchemy import event
        self.engine, self.spent, self._event = engine, {}, event
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, *args):
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn, cursor, statement, *args):
        target = statement.split("(")[0]
        phase = next((name for table, name in self.PHASES if f"INTO {table}" in target), "other (temporary table)")
        self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - conn.info.pop("bench_started")

    def stop(self) -> None:
        self._event.remove(self.engine, "before_cursor_execute", self._before)
        self._event.remove(self.engine, "after_cursor_execute", self._after)

    def split(self, total: float) -> dict[str, float]:
        return {**self.spent, "commit, compile, Python": total - sum(self.spent.values())}


def render_copies(store) -> tuple[int, float]:
    """What the delivery scheduler does with the queued template mail, batch by claimed batch: read the
    recipients' counters and render each copy. Returns how many deliveries were queued and the time."""
    from sqlalchemy import select

    from listkeeper.delivery.scheduler import BATCH
    from listkeeper.engine.events import TemplateCopies
    from listkeeper.store.tables import deliveries, messages
    with store.engine.connect() as conn:
        (message_id, data), = conn.execute(select(messages.c.id, messages.c.data).where(messages.c.kind == "template", messages.c.list_name == "big"))
        due = conn.execute(select(deliveries.c.id, deliveries.c.recipient)
                           .where(deliveries.c.message_id == message_id).order_by(deliveries.c.id)).all()
        start = time.perf_counter()
        copies = TemplateCopies.load(data)
        made = {}
        for i in range(0, len(due), BATCH):
            made.update(copies.for_batch(conn, [tuple(r) for r in due[i:i + BATCH]]))
        elapsed = time.perf_counter() - start
    if not all(isinstance(copy, bytes) for copy in made.values()) or len(made) != len(due):
        sys.exit("a template copy could not be rendered")
    return len(due), elapsed


def build(root: Path, subscribers: int, now: float) -> Path:
    """The store of the run: list 'big' with N subscribers (all joined, 10% flagged) and list 'warm'."""
    from listkeeper.manifests import load_manifests
    from listkeeper.reconcile import reconcile
    from listkeeper.store import Store

    (root / "conf").mkdir()
    (root / "conf" / "list.yaml").write_text(
        "apiVersion: listkeeper/v1\nkind: Domain\nmetadata: {name: d}\n"
        "spec: {domain: example.org, hostname: lists.example.org, postmaster: postmaster@example.org}\n---\n"
        "apiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: big}\nspec:\n"
        "  address: big@example.org\n  type: discussion\n" + EVENTS + "---\n"
        "apiVersion: listkeeper/v1\nkind: MailingList\nmetadata: {name: warm}\nspec:\n"
        "  address: warm@example.org\n  type: discussion\n" + EVENTS)
    path = root / "store.db"
    store = Store.open(f"sqlite:///{path}")
    reconcile(load_manifests([root / "conf"]), store)
    store.close()
    db = sqlite3.connect(path)
    people = [f"member{i}@d{i % 1000}.example" for i in range(subscribers)]
    db.executemany("INSERT INTO subscribers (list_name, address, source, joined_at) VALUES ('big', ?, 'directory', ?)",
                   [(a, now) for a in people])
    db.executemany("INSERT INTO event_counters VALUES ('big', ?, 'join', 1, ?)", [(a, now) for a in people])
    db.executemany("INSERT INTO event_counters VALUES ('big', ?, 'flag', 1, ?)",
                   [(a, now) for a in people[::10]])  # 10% qualify
    # a small list with the same events, ticked first: the engine ticks every few minutes in one
    # process, so the measured tick is a steady one (statements compiled, connection open)
    db.executemany("INSERT INTO subscribers (list_name, address, source, joined_at) VALUES ('warm', ?, 'directory', ?)",
                   [(a, now) for a in people[:10]])
    db.executemany("INSERT INTO event_counters VALUES ('warm', ?, ?, 1, ?)",
                   [(a, e, now) for a in people[:10] for e in ("join", "flag")])
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


def baselines(path: Path, now: float, runs: int) -> tuple[float, float, set, int]:
    """The fastest of `runs` for each hand-written statement, what the five-event one selects, and how
    many the one-event one selects."""
    db = sqlite3.connect(path)
    five = one = float("inf")
    for _ in range(runs):  # read-only, so repeatable
        start = time.perf_counter()
        selected = set(db.execute(FIVE_EVENTS, {"now": now}).fetchall())
        five = min(five, time.perf_counter() - start)
        start = time.perf_counter()
        welcome = len(db.execute(ONE_EVENT).fetchall())
        one = min(one, time.perf_counter() - start)
    db.close()
    return five, one, selected, welcome


def one_tick(path: Path, now: float, render: bool) -> dict:
    """A steady tick on `path`: the warm list first, then the measured one, its phases, what it fired."""
    from dataclasses import replace
    from types import MappingProxyType

    from listkeeper.engine.events import tick
    from listkeeper.engine.snapshot import load_snapshot
    from listkeeper.manifests.events import in_dependency_order
    from listkeeper.store import Store
    from listkeeper.store import events as store_events

    store = Store.open(f"sqlite:///{path}")
    snapshot = load_snapshot(store)
    lst = next(item for item in snapshot.lists.values() if item.name == "big")
    warm = replace(snapshot, lists=MappingProxyType({k: v for k, v in snapshot.lists.items() if v.name == "warm"}))
    start = time.perf_counter()
    warmed = tick(store, warm, now - 30)
    cold = time.perf_counter() - start
    if sum(f.count for f in warmed) != 20:
        sys.exit(f"the warm-up tick fired {warmed}")
    welcome = next(e for e in in_dependency_order(lst.spec.events) if e.name == "welcome")
    start = time.perf_counter()
    with store.engine.connect() as conn:  # the evaluation alone: the welcome set, as ONE_EVENT computes it
        selected = len(conn.execute(store_events.eligible("big", welcome, now)).scalars().all())
    evaluation = time.perf_counter() - start
    phases = time_statements(store.engine)
    start = time.perf_counter()
    fired = tick(store, snapshot, now)
    elapsed = time.perf_counter() - start
    phases.stop()
    with store.engine.connect() as conn:
        logged = set(tuple(r) for r in conn.exec_driver_sql(
            "SELECT event, address FROM event_fires WHERE list_name = 'big' AND at = ?", (now,)))
    queued, rendering = render_copies(store) if render else (None, None)
    store.close()
    return {"tick": elapsed, "cold": cold, "evaluation": evaluation, "welcome_selected": selected,
            "fired": {f.event: f.count for f in fired if f.list_name == "big"}, "logged": logged,
            "phases": phases.split(elapsed), "queued": queued, "render": rendering}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench events", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 100,000 subscribers")
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="ticks (each on a fresh copy) and baseline runs")
    args = parser.parse_args()
    if args.full:
        args.subscribers = 100_000
    import shutil

    with tempfile.TemporaryDirectory(prefix="lk-bench-events-") as tmp:
        root = Path(tmp)
        now = time.time()
        pristine = build(root, args.subscribers, now)
        five, one, expected, welcome = baselines(pristine, now + 60, args.runs)
        ticks = []
        for run in range(args.runs):  # each on a copy of the same database: a tick changes what it reads
            copy = root / f"run{run}.db"
            shutil.copyfile(pristine, copy)
            ticks.append(one_tick(copy, now + 60, render=run == 0))
            copy.unlink()
    best = min(ticks, key=lambda t: t["tick"])
    first = ticks[0]
    for t in ticks:
        if t["logged"] != expected:
            sys.exit(f"the tick fired {len(t['logged'])} (event, subscriber) pairs, the baseline selects {len(expected)}; "
                     f"differing: {sorted(t['logged'] ^ expected)[:5]}")
        if t["fired"].get("welcome") != welcome or t["welcome_selected"] != welcome:
            sys.exit(f"tick fired welcome for {t['fired'].get('welcome')}, the one-event baseline selects {welcome}")
    if first["queued"] != welcome:
        sys.exit(f"the tick queued {first['queued']} template mails for {welcome} fires of welcome")
    evaluation = min(t["evaluation"] for t in ticks)
    ticks_sorted = sorted(t["tick"] for t in ticks)
    median = ticks_sorted[len(ticks_sorted) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.subscribers} subscribers, 5 events; fired: {best['fired']} "
          f"(the same {len(expected)} (event, subscriber) pairs as the baseline); fastest of {args.runs}")
    rows = [
        ("tick: evaluate 5 events, count + log fires, queue template mails", best["tick"]),
        (f"  (median of the {args.runs} ticks)", median),
        ("baseline: one hand-written statement, the 5 events' sets", five),
        ("ratio, tick / baseline", best["tick"] / five),
        ("narrower baseline: hand-written, the first event's set only", one),
        ("  ratio, tick / narrower baseline", best["tick"] / one),
        ("evaluation alone: the compiled statement for that event", evaluation),
        ("  ratio, evaluation / narrower baseline", evaluation / one),
        ("(first tick of the process, 10 subscribers: compiling)", first["cold"]),
    ]
    rows += [("  tick: " + phase, seconds) for phase, seconds in best["phases"].items()]
    rows.append((f"(at delivery, not in the tick) rendering the {first['queued']} copies", first["render"]))
    print(f"{'path':<66}{'seconds':>9}")
    for label, value in rows:
        print(f"{label:<66}{value:>9.3f}" if not label.startswith(("ratio", "  ratio")) else f"{label:<66}{value:>8.1f}x")
    print(json.dumps({"bench": "events", "subscribers": args.subscribers, "runs": args.runs, "fired": best["fired"],
                      "tick_s": round(best["tick"], 3), "tick_median_s": round(median, 3),
                      "baseline_s": round(five, 3), "ratio": round(best["tick"] / five, 2),
                      "one_event_baseline_s": round(one, 3), "ratio_to_one_event": round(best["tick"] / one, 2),
                      "evaluation_s": round(evaluation, 3), "evaluation_ratio": round(evaluation / one, 2),
                      "first_tick_10_subscribers_s": round(first["cold"], 3),
                      "render_at_delivery_s": round(first["render"], 3),
                      "tick_phases_s": {k: round(v, 3) for k, v in best["phases"].items()},
                      "peak_rss_mb": round(rss, 1)}))


if __name__ == "__main__":
    main()
