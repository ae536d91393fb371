"""Reports: the rows of each type over a period, the mail (text table + CSV), the schedule kept in the store,
and `listkeeper report show|run` against a running engine that delivers into the pickup folder."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import datetime, timezone
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import insert, select

from listkeeper.engine.housekeeping import run_round
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.notify import reports
from listkeeper.notify.reports import Table, render_csv, render_table
from listkeeper.store import reports as store_reports
from listkeeper.store import subscribers
from listkeeper.store.tables import messages, report_runs

from .conftest import DOMAIN, pickup_routes, reconcile_folder, wait_for, write
from .test_serve import LISTS, message, send

BARRING = """
apiVersion: listkeeper/v1
kind: Barring
metadata: {name: spam}
spec:
  senders: ["spam*@bad.example"]
"""


def report(name: str, type_: str, schedule: str = "0 7 * * *", extra: str = "") -> str:
    return f"""
apiVersion: listkeeper/v1
kind: Report
metadata: {{name: {name}}}
spec:
  type: {type_}
  schedule: "{schedule}"
  recipients: [ops@example.org, owner@example.net]
{extra}
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "barring.yaml", BARRING)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(folder, "reports.yaml", "---\n".join([
        report("barring", "barring", extra="  timezone: Europe/Berlin"),
        report("subscriptions", "subscriptions", "@daily"),
        report("failures", "delivery_failures", "0 * * * *"),
        report("events", "events", "0 7 * * mon"),
        report("queue", "queue", "*/30 * * * *"),
    ]))
    return folder


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_text_table_and_csv_hold_the_same_rows():
    table = Table(("time", "sender", "reason"), (("2030-01-01 07:00:00", "a@x.example", "long " * 30),
                                                 ("2030-01-01 08:00:00", "b@x.example", "short, with \"quotes\"")))
    text = render_table(table, max_rows=10)
    assert text[0].split() == ["time", "sender", "reason"] and set(text[1].strip()) <= {"-", " "}
    assert text[2].startswith("  2030-01-01 07:00:00  a@x.example  long long") and text[2].endswith("…")
    assert all(line.startswith("  ") for line in text)  # kept as they are by the mail's line wrapping
    assert list(csv.reader(io.StringIO(render_csv(table)))) == [list(table.columns)] + [list(r) for r in table.rows]
    assert render_table(table, max_rows=1)[-1] == "  … and 1 more row(s): the CSV attachment has them all."


def test_the_schedule_is_read_in_the_reports_time_zone(conf, store_url):
    store = reconcile_folder(conf, store_url)
    spec = load_snapshot(store).reports["barring"]  # 0 7 * * * in Europe/Berlin
    assert reports.next_time(spec, ts("2030-01-01T05:00")) == ts("2030-01-01T06:00")  # 07:00 CET
    assert reports.next_time(spec, ts("2030-07-01T04:00")) == ts("2030-07-01T05:00")  # 07:00 CEST
    assert reports.previous_time(spec, ts("2030-01-01T12:00")) == ts("2030-01-01T06:00")
    store.close()


def test_reports_go_out_on_schedule_covering_the_time_since_their_last_run(conf, store_url):
    store = reconcile_folder(conf, store_url)
    snapshot = load_snapshot(store)
    start = ts("2030-01-01T05:00")
    jobs = {"reports.send": reports.send_due}
    assert run_round(store, snapshot, start, jobs).queued == {}  # first seen: the period starts now
    with store.engine.begin() as conn:
        assert store_reports.last_run(conn, "barring") == start
        from listkeeper.store import refusals
        refusals.record(conn, start + 60, "192.0.2.7", "spam@bad.example", ["members@example.org"],
                        "barring.sender", "sender matches", "550 no")
        refusals.record(conn, ts("2030-01-01T06:30"), "192.0.2.7", "spam2@bad.example", [], "barring.sender",
                        "sender matches", "550 no")  # after the report's time: the next report's
    assert run_round(store, snapshot, ts("2030-01-01T05:59"), jobs).queued == {"reports.send": 1}  # queue: */30
    assert run_round(store, snapshot, ts("2030-01-01T06:00"), jobs).queued == {"reports.send": 3}  # + hourly
    with store.engine.connect() as conn:
        sent = {row.reason: row.data for row in conn.execute(select(messages.c.reason, messages.c.data)
                                                             .where(messages.c.reason.like("report %")))}
        assert store_reports.last_run(conn, "barring") == ts("2030-01-01T06:00")
    mail = message_from_bytes(sent["report barring"], policy=default)
    text = "\n".join(mail.get_body(("plain",)).get_content().splitlines())
    assert "Report barring (barring)\n  from 2030-01-01 06:00:00 to 2030-01-01 07:00:00 (Europe/Berlin)\n" in text
    assert "1 message(s) refused: 1 by barring.sender" in text
    assert "spam@bad.example" in text and "spam2@bad.example" not in text
    assert run_round(store, snapshot, ts("2030-01-01T06:01"), jobs).queued == {}  # nothing is sent twice
    with store.engine.connect() as conn:
        count = conn.execute(select(messages.c.id).where(messages.c.reason == "report barring")).all()
    assert len(count) == 1
    store.close()


def test_subscriptions_report_counts_joins_and_leaves_per_list(conf, store_url):
    store = reconcile_folder(conf, store_url)  # the manifest's subscribers joined now
    now = store.now()
    with store.engine.begin() as conn:
        subscribers.unsubscribe(conn, "members", "bob@example.net", now, "mail")
        subscribers.subscribe(conn, "club", "new@example.net", now, "mail", digest=True)
        built = reports.build(conn, "subscriptions", load_snapshot(store).reports["subscriptions"], now - 60, now + 1)
    assert "members: 5 joined, 1 left" in built.summary
    assert "club: 2 joined, 0 left" in built.summary  # alice, and new (chair only moderates)
    assert ("members", "bob@example.net", "leave", "mail") in {(r[0], r[2], r[3], r[4]) for r in built.table.rows}
    assert built.table.columns == ("list", "time", "address", "action", "source", "detail")
    store.close()


def test_a_report_of_an_unknown_list_or_type_is_a_validation_error(tmp_path):
    path = write(tmp_path, "r.yaml", report("r", "barring", extra="  lists: [nope]") + "---\n"
                 + report("s", "everything") + "---\n" + report("t", "queue", "every day"))
    with pytest.raises(ManifestErrors) as raised:
        load_manifests([path])
    text = "\n".join(map(str, raised.value.errors))
    assert "spec.lists[0]: no MailingList named 'nope'" in text
    assert "spec.lists: a barring report is not per list" in text
    assert "spec.type: Input should be 'delivery_failures', 'subscriptions', 'barring', 'events' or 'queue'" in text
    assert "spec.schedule: 'every day' is not a cron expression" in text


def outbox(tmp_path: Path, address: str) -> list[Path]:
    folder = tmp_path / "outbox"
    return sorted(folder.glob(f"*-{address}.eml")) if folder.exists() else []


async def test_report_show_and_run_from_the_command_line(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    for sender in ("spam@bad.example", "spam-two@bad.example"):
        with pytest.raises(aiosmtplib.SMTPSenderRefused):
            await send(engine.port, sender, ["members@example.org"], message(sender, "members@example.org", "x"))
    env = {**os.environ, "LISTKEEPER_STORE": store_url}

    def cli(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "listkeeper", "report", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    shown = cli("show", "barring", "--since", "2000-01-01")
    assert shown.returncode == 0, shown.stderr
    assert "2 message(s) refused: 2 by barring.sender" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines() if "@bad.example" in line]
    assert [r[3] for r in rows] == ["spam@bad.example", "spam-two@bad.example"]  # time (2), remote_ip, sender

    ran = cli("run", "barring", "--since", "2000-01-01")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("barring: 2 row(s) queued for ops@example.org, owner@example.net: listkeeper "
                                 "report barring: 2 row(s), 2000-01-01")
    engine.scheduler.wake()  # the CLI queued it in the store; serve finds it at its next run
    await wait_for(lambda: outbox(tmp_path, "ops@example.org") and outbox(tmp_path, "owner@example.net"))
    mail = message_from_bytes(outbox(tmp_path, "ops@example.org")[0].read_bytes(), policy=default)
    assert mail["Return-Path"] == "<>" and mail["From"] == "postmaster@example.org"
    assert mail["X-Listkeeper-Report"] == "barring" and mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_body(("plain",)).get_content()
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_content_type() == "text/csv" and attachment.get_filename().startswith("barring-")
    table = list(csv.reader(io.StringIO(attachment.get_content())))
    assert table[0] == ["time", "remote_ip", "sender", "recipients", "rule", "reason"]
    assert [r[2] for r in table[1:]] == ["spam@bad.example", "spam-two@bad.example"]
    for row in table[1:]:  # the text table holds the same rows
        assert any(line.split()[:4] == row[0].split() + [row[1], row[2]] for line in text.splitlines())

    # --since leaves the schedule alone; without it the run is recorded, and the next period starts there
    assert "Nothing to show." not in cli("show", "barring").stdout
    assert cli("run", "barring").returncode == 0
    assert "Nothing to show." in cli("show", "barring").stdout

    unknown = cli("show", "nope")
    assert unknown.returncode == 1 and "no report 'nope' in the applied configuration (reports: barring, " \
        in unknown.stderr


def report_cli(store_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listkeeper", "report", *args], capture_output=True, text=True,
                          env={**os.environ, "LISTKEEPER_STORE": store_url}, timeout=60)


def queued_reports(store) -> int:
    with store.engine.connect() as conn:
        return len(conn.execute(select(messages.c.id).where(messages.c.reason.like("report %"))).all())


def test_report_run_that_queues_nothing_says_why_and_exits_3(conf, store_url):
    """A last run recorded at or after now (another node's clock ahead) was called 'recorded meanwhile';
    a race with the round's first 'start' record (which sends nothing) was called a 'start run' that took
    the period; and a script could not tell from the exit status that nothing went out."""
    store = reconcile_folder(conf, store_url)
    try:
        ahead = datetime.now(timezone.utc).replace(microsecond=0).timestamp() + 120
        with store.engine.begin() as conn:
            conn.execute(insert(report_runs).values(name="barring", last_run_at=ahead, rows=0, trigger="schedule"))
        ran = report_cli(store_url, "run", "barring")
        shown = datetime.fromtimestamp(ahead, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert (ran.returncode, ran.stdout) == (3, f"barring: nothing queued: its last run is recorded at {shown}, "
                                                   f"not before now: a node's clock may run ahead.\n"), ran.stderr

        # the round's first record lands between this run's read and its claim (as on PostgreSQL; here the
        # trigger writes it in the run's own transaction, so it goes when the run rolls back)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER start_meanwhile BEFORE INSERT ON report_runs WHEN NEW.\"trigger\" = 'hand' BEGIN "
                "INSERT INTO report_runs (name, last_run_at, rows, \"trigger\") "
                "VALUES (NEW.name, NEW.last_run_at - 1, 0, 'start'); END")
        ran = report_cli(store_url, "run", "subscriptions")
        assert (ran.returncode, ran.stdout) == (3, "subscriptions: nothing queued: the report's schedule was just "
                                                   "started and nothing has been sent yet; run it again to send "
                                                   "now.\n"), ran.stderr
        assert queued_reports(store) == 0
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER start_meanwhile")
        ran = report_cli(store_url, "run", "subscriptions")
        assert ran.returncode == 0 and " row(s) queued for ops@example.org, " in ran.stdout, ran.stderr
        assert queued_reports(store) == 1
    finally:
        store.close()
