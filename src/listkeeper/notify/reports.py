"""Reports (Mailtraq): a table of what happened since the report's last run, mailed on its schedule as
plain text with the same rows as a CSV attachment.

The housekeeping job `reports.send` claims each due report's period, then queues it, in one
transaction, so a report is never lost nor sent twice (by two nodes, or the round and a hand run); a
report seen for the first time only starts its period then.
`listkeeper report run NAME` sends one now; `listkeeper report show NAME` prints it."""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy.engine import Connection

from listkeeper.engine.replies import notice
from listkeeper.engine.snapshot import Snapshot
from listkeeper.manifests.reports import ReportSpec, ReportType
from listkeeper.store import reports as store_reports
from listkeeper.store.queue import PostRecord

log = logging.getLogger("listkeeper.reports")
CELL = 60  # characters a cell shows in the text table; the CSV has it whole


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Built:
    name: str
    spec: ReportSpec
    since: float
    until: float
    table: Table
    summary: tuple[str, ...]  # lines above the table


def _clock(zone: ZoneInfo) -> Callable[[float | None], str]:
    def shown(at: float | None) -> str:
        return datetime.fromtimestamp(at, zone).strftime("%Y-%m-%d %H:%M:%S") if at is not None else ""
    return shown


def _delivery_failures(conn, spec, since, until, when) -> tuple[Table, tuple[str, ...]]:
    found = store_reports.delivery_failures(conn, since, until, spec.lists)
    rows = tuple((when(r["at"]), r["list_name"] or "", r["recipient"], r["state"], str(r["attempts"]),
                  r["transport"] or "", r["last_error"] or "") for r in found)
    states = Counter(r["state"] for r in found)
    return (Table(("time", "list", "recipient", "state", "attempts", "destination", "error"), rows),
            (f"{states['failed']} delivery(ies) failed for good; {states['deferred']} deferred and still being "
             f"retried (as last recorded).",))


def _subscriptions(conn, spec, since, until, when) -> tuple[Table, tuple[str, ...]]:
    found = store_reports.subscription_changes_between(conn, since, until, spec.lists)
    rows = tuple((r["list_name"], when(r["at"]), r["address"], r["action"], r["source"], r["detail"] or "")
                 for r in found)
    per_list: dict[str, Counter] = {}
    for r in found:
        per_list.setdefault(r["list_name"], Counter())[r["action"]] += 1
    summary = tuple(f"{name}: {c['join']} joined, {c['leave']} left"
                    + (f", {sum(c.values()) - c['join'] - c['leave']} other change(s)"
                       if sum(c.values()) > c["join"] + c["leave"] else "")
                    for name, c in sorted(per_list.items())) or ("No subscription changed.",)
    return Table(("list", "time", "address", "action", "source", "detail"), rows), summary


def _barring(conn, spec, since, until, when) -> tuple[Table, tuple[str, ...]]:
    found = store_reports.refusals_between(conn, since, until)
    rows = tuple((when(r["at"]), r["peer"] or "", r["mail_from"] or "<>", " ".join(r["recipients"]), r["rule"],
                  r["reason"]) for r in found)
    rules = Counter(r["rule"] for r in found)
    summary = (f"{len(found)} message(s) refused" + (": " + ", ".join(f"{n} by {rule}" for rule, n in
                                                                     sorted(rules.items())) if rules else "."),)
    return Table(("time", "remote_ip", "sender", "recipients", "rule", "reason"), rows), summary


def _events(conn, spec, since, until, when) -> tuple[Table, tuple[str, ...]]:
    found = store_reports.event_activity(conn, since, until, spec.lists)
    rows = tuple((r["list_name"], r["event"], str(r["fires"]), str(r["subscribers"]), when(r["first"]),
                  when(r["last"])) for r in found)
    return (Table(("list", "event", "fires", "subscribers", "first", "last"), rows),
            (f"{sum(r['fires'] for r in found)} fire(s) of {len(found)} list event(s).",))


def _queue(conn, spec, since, until, when) -> tuple[Table, tuple[str, ...]]:
    found = store_reports.queue_state(conn)
    rows = tuple((r["state"], r["transport"] or "-", str(r["deliveries"]), when(r["oldest"]), when(r["next_attempt"]))
                 for r in found)
    return (Table(("state", "destination", "deliveries", "oldest", "next_attempt"), rows),
            (f"{sum(r['deliveries'] for r in found)} delivery(ies) not yet done, as of {when(until)}.",))


BUILDERS = {ReportType.delivery_failures: _delivery_failures, ReportType.subscriptions: _subscriptions,
            ReportType.barring: _barring, ReportType.events: _events, ReportType.queue: _queue}


def build(conn: Connection, name: str, spec: ReportSpec, since: float, until: float) -> Built:
    table, summary = BUILDERS[spec.type](conn, spec, since, until, _clock(ZoneInfo(spec.timezone)))
    return Built(name, spec, since, until, table, summary)


def previous_time(spec: ReportSpec, now: float) -> float:
    """The schedule's last time at or before `now`: where a report without a last run starts."""
    zone = ZoneInfo(spec.timezone)
    return croniter(spec.schedule, datetime.fromtimestamp(now, zone)).get_prev(datetime).timestamp()


def next_time(spec: ReportSpec, after: float) -> float:
    zone = ZoneInfo(spec.timezone)
    return croniter(spec.schedule, datetime.fromtimestamp(after, zone)).get_next(datetime).timestamp()


def period_start(conn: Connection, name: str, spec: ReportSpec, now: float) -> float:
    last = store_reports.last_run(conn, name)
    return last if last is not None else previous_time(spec, now)


def _cell(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= CELL else value[:CELL - 1] + "…"


def render_table(table: Table, max_rows: int) -> list[str]:
    shown = [tuple(_cell(v) for v in row) for row in table.rows[:max_rows]]
    widths = [max([len(c)] + [len(row[i]) for row in shown]) for i, c in enumerate(table.columns)]

    def line(cells) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(table.columns), line("-" * w for w in widths)] + [line(row) for row in shown]
    if len(table.rows) > max_rows:
        out.append(f"  … and {len(table.rows) - max_rows} more row(s): the CSV attachment has them all.")
    return out


def render_text(built: Built) -> str:
    when = _clock(ZoneInfo(built.spec.timezone))
    period = (f"as of {when(built.until)}" if built.spec.type is ReportType.queue else
              f"from {when(built.since)} to {when(built.until)}")
    # indented lines are kept as they are by the mail's line wrapping
    head = [f"Report {built.name} ({built.spec.type.value})", f"  {period} ({built.spec.timezone})", "",
            *built.summary, ""]
    if not built.table.rows:
        return "\n".join(head + ["Nothing to show."]) + "\n"
    return "\n".join(head + render_table(built.table, built.spec.max_rows)) + "\n"


def render_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return out.getvalue()


def subject_of(built: Built) -> str:
    when = _clock(ZoneInfo(built.spec.timezone))
    return built.spec.subject.format(report=built.name, type=built.spec.type.value, since=when(built.since)[:16],
                                     until=when(built.until)[:16], rows=len(built.table.rows))


def report_mail(built: Built, snapshot: Snapshot, now: float) -> bytes:
    hostname = snapshot.hostname()
    sender = built.spec.sender or next((d.postmaster for d in snapshot.domains.values()), None) \
        or f"postmaster@{hostname}"
    mail = notice(sender, ", ".join(built.spec.recipients), subject_of(built), render_text(built), hostname, now)
    mail["X-Listkeeper-Report"] = built.name
    stamp = datetime.fromtimestamp(built.until, timezone.utc).strftime("%Y%m%d-%H%M")
    mail.add_attachment(render_csv(built.table), subtype="csv", filename=f"{built.name}-{stamp}.csv")
    return mail.as_bytes()


def report_post(built: Built, snapshot: Snapshot, now: float) -> PostRecord:
    """Queued with a null envelope sender, as the engine's other reports: a failure is never bounced."""
    return PostRecord("", "queued", f"report {built.name}", report_mail(built, snapshot, now), "",
                      tuple(built.spec.recipients))


class AlreadySent(Exception):
    """A run by hand found another run recorded since it read the last one (or one not before now)."""

    def __init__(self, name: str, at: float, trigger: str, now: float) -> None:
        super().__init__(name, at, trigger, now)
        self.name, self.at, self.trigger, self.now = name, at, trigger, now

    @property
    def ahead(self) -> bool:
        """The last run is recorded at or after this run's now: a node's clock runs ahead of ours."""
        return self.at >= self.now


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def run_now(conn: Connection, snapshot: Snapshot, name: str, now: float, since: float | None = None) \
        -> tuple[Built, PostRecord]:
    """Build the report for [since or its last run, now), record the run unless `since` was given (an
    extra report then leaves the schedule's period alone), and return it with its mail to queue. The
    run is claimed before it is built: AlreadySent when another run took the period meanwhile."""
    spec = snapshot.reports.get(name)
    if spec is None:
        raise LookupError(f"no report {name!r} in the applied configuration")
    if since is not None:
        built = build(conn, name, spec, since, now)
        return built, report_post(built, snapshot, now)
    last = store_reports.last_run(conn, name)
    if (last is not None and last >= now) or not store_reports.claim_run(conn, name, last, now, "hand"):
        found = store_reports.last_run_row(conn, name)
        raise AlreadySent(name, found["last_run_at"], found["trigger"], now)
    built = build(conn, name, spec, last if last is not None else previous_time(spec, now), now)
    store_reports.count_rows(conn, name, len(built.table.rows))
    return built, report_post(built, snapshot, now)


def send_due(conn: Connection, snapshot: Snapshot, now: float) -> list[PostRecord]:
    """The housekeeping job: every enabled report whose scheduled time has come since its last run, each
    claimed before it is built, so a period another node or a hand run took meanwhile goes out once."""
    posts = []
    for name, spec in sorted(snapshot.reports.items()):
        if not spec.enabled:
            continue
        last = store_reports.last_run(conn, name)
        if last is None:  # first seen: its first period starts now
            store_reports.claim_run(conn, name, None, now, "start")
            continue
        if next_time(spec, last) > now:
            continue
        if not store_reports.claim_run(conn, name, last, now, "schedule"):
            found = store_reports.last_run_row(conn, name)
            log.info("report %s: the period from %s was already sent (%s run up to %s)", name, _utc(last),
                     found["trigger"], _utc(found["last_run_at"]))
            continue
        built = build(conn, name, spec, last, now)
        store_reports.count_rows(conn, name, len(built.table.rows))
        posts.append(report_post(built, snapshot, now))
        log.info("report %s (%s): %d row(s) from %s queued for %s", name, spec.type.value, len(built.table.rows),
                 _utc(last), ", ".join(spec.recipients))
    return posts
