"""Structured logs: the formats first (pure), then one post followed by its ids through a real engine, and
`listkeeper serve --log-format json` as a process whose every line is a JSON object."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiosmtplib
import pytest

from listkeeper.logs import JsonFormatter, TextFormatter, TEXT_FORMAT, note, session_id

from .conftest import DOMAIN, REPO, pickup_routes, wait_for, write
from .test_relay import free_port
from .test_serve import LISTS, message
from .test_serve_process import post, wait_outbox
from .test_notify_engine import BARRING, barred, notification
from .test_reload import follow, members, watching
from .test_smtp_auth import PASSWORD, account, auth, client, make_conf

REGULAR = {"alice@example.org", "bob@example.net", "carol@example.com", "chair@example.org"}


def capture(formatter: logging.Formatter, name: str = "test.logs") -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, out


def test_a_record_is_one_json_object_with_its_event_and_fields():
    logger, out = capture(JsonFormatter())
    note(logger, "delivery.attempt", outcome="delivered", delivery_id=7, message_id=3, recipient="a@b.test",
         detail=None, replies={"250": 2})
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "delivery.attempt" and record["level"] == "info" and record["logger"] == "test.logs"
    assert (record["delivery_id"], record["message_id"], record["recipient"]) == (7, 3, "a@b.test")
    assert record["replies"] == {"250": 2} and "detail" not in record and "message" not in record
    assert record["time"].endswith("Z") and "T" in record["time"]


def test_plain_records_and_exceptions_stay_one_json_line_each():
    logger, out = capture(JsonFormatter())
    logger.warning("a plain line\nwith a second line")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    plain, failed = (json.loads(line) for line in lines)
    assert plain["event"] == "log" and plain["message"] == "a plain line\nwith a second line"
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"]


def test_the_session_id_joins_every_record_written_during_a_session():
    logger, out = capture(JsonFormatter())
    text_logger, text_out = capture(TextFormatter(TEXT_FORMAT), "test.logs.text")
    token = session_id.set("abc123")
    try:
        note(logger, "post.verdict", list="members", verdict="accept", reason="a member: may post")
        note(text_logger, "post.verdict", list="members", verdict="accept", reason="a member: may post")
    finally:
        session_id.reset(token)
    note(logger, "delivery.attempt", delivery_id=1)
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["session"] == "abc123" and "session" not in outside
    assert text_out.getvalue().rstrip().endswith(
        "INFO test.logs.text post.verdict list=members verdict=accept reason='a member: may post' session=abc123")


def test_a_missing_id_is_left_out_of_text_and_json_alike():
    """A digest or a report was not accepted over SMTP: its delivery attempts have no queue_id at all."""
    logger, out = capture(JsonFormatter())
    text_logger, text_out = capture(TextFormatter(TEXT_FORMAT), "test.logs.text")
    for log_to in (logger, text_logger):
        note(log_to, "delivery.attempt", outcome="delivered", delivery_id=7, queue_id=41, message_id=42)
        note(log_to, "delivery.attempt", outcome="delivered", delivery_id=8, queue_id=None, message_id=43)
    posted, report = (json.loads(line) for line in out.getvalue().splitlines())
    assert posted["queue_id"] == 41 and "queue_id" not in report
    lines = text_out.getvalue().splitlines()
    assert lines[0].endswith("delivery.attempt outcome=delivered delivery_id=7 queue_id=41 message_id=42")
    assert lines[1].endswith("delivery.attempt outcome=delivered delivery_id=8 message_id=43")


def follow_one_post(records: list[dict], queue_id: int) -> tuple[dict, list[dict], list[dict]]:
    """From a post's acceptance to each of its deliveries, by ids only: its `smtp.accepted` record, the
    `post.queued` records of its copies (queue_id -> message_id), and their `delivery.attempt` records."""
    (accepted,) = [r for r in records if r["event"] == "smtp.accepted" and r["queue_id"] == queue_id]
    copies = [r for r in records if r["event"] == "post.queued" and r["queue_id"] == queue_id]
    message_ids = {r["message_id"] for r in copies}
    attempts = [r for r in records if r["event"] == "delivery.attempt" and r["message_id"] in message_ids]
    return accepted, copies, attempts


async def test_two_posts_of_one_session_are_followed_by_their_ids_to_each_delivery(tmp_path, engine_for):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "lists.yaml", LISTS)
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    logger, out = capture(JsonFormatter(), "listkeeper")
    logger.setLevel(logging.INFO)
    try:
        engine = await engine_for(conf)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False) as client:
            for subject in ("One", "Two"):
                await client.sendmail("alice@example.org", ["members@example.org"],
                                      message("alice@example.org", "members@example.org", subject))
        await wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) == 8)
        await wait_for(lambda: '"smtp.session"' in out.getvalue())
        records = [json.loads(line) for line in out.getvalue().splitlines()]  # every line parses
    finally:
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    (session,) = [r for r in records if r["event"] == "smtp.session"]
    assert len(session["queue_ids"]) == 2 and session["replies"]["250"] >= 6 and session["replies"]["220"] == 1
    verdicts = [r for r in records if r["event"] == "post.verdict" and r.get("session") == session["session"]]
    assert [(v["list"], v["verdict"]) for v in verdicts] == [("members", "accept")] * 2
    seen_deliveries = set()
    for queue_id in session["queue_ids"]:
        accepted, copies, attempts = follow_one_post(records, queue_id)
        assert accepted["session"] == session["session"] and accepted["recipients"] == ["members@example.org"]
        assert [(c["list"], c["state"], c["session"]) for c in copies] == [("members", "queued", session["session"])]
        assert sorted(a["recipient"] for a in attempts) == sorted(REGULAR)
        # one lookup is enough: each attempt names the SMTP queue id too
        assert [a for a in records if a["event"] == "delivery.attempt" and a.get("queue_id") == queue_id] == attempts
        assert all(a["outcome"] == "delivered" and a["transport"] == "pickup" and a["attempt"] == 1 for a in attempts)
        seen_deliveries |= {a["delivery_id"] for a in attempts}
    assert len(seen_deliveries) == 8  # each delivery belongs to exactly one of the two posts


async def test_a_login_is_one_smtp_auth_record_and_the_session_names_the_user(tmp_path, engine_for, monkeypatch):
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    logger, out = capture(JsonFormatter(), "listkeeper")
    logger.setLevel(logging.INFO)
    try:
        engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")))

        def session() -> None:
            with client(engine.port) as smtp:
                assert auth(smtp, "PLAIN", "nobody@example.org", "guess")[0] == 535
                assert auth(smtp, "PLAIN", "alice@example.org", PASSWORD)[0] == 235

        await asyncio.to_thread(session)
        await wait_for(lambda: '"smtp.session"' in out.getvalue())
        text = out.getvalue()
    finally:
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    records = [json.loads(line) for line in text.splitlines()]
    (closed,) = [r for r in records if r["event"] == "smtp.session"]
    logins = [(r["outcome"], r["username"], r["level"], r["session"]) for r in records if r["event"] == "smtp.auth"]
    assert logins == [("failed", "nobody@example.org", "warning", closed["session"]),
                      ("ok", "alice@example.org", "info", closed["session"])]
    assert closed["username"] == "alice@example.org" and closed["tls"] is False
    assert closed["replies"]["535"] == 1 and closed["replies"]["235"] == 1
    assert PASSWORD not in text and "guess" not in text


async def test_reloads_and_notifications_are_one_record_each(tmp_path, engine_for):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", members(["alice@example.org"]))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(conf, "barring.yaml", BARRING)
    write(conf, "notify.yaml", notification("barred", "message.barred", f"""
    - type: log
      path: {tmp_path / 'barred.jsonl'}"""))
    logger, out = capture(JsonFormatter(), "listkeeper")
    logger.setLevel(logging.INFO)
    try:
        engine = await engine_for(conf, reload=follow(conf))
        await watching(engine, conf)
        await barred(engine.port)
        await wait_for(lambda: '"notification.sent"' in out.getvalue())
        write(conf, "members.yaml", members(["alice@example.org"], kind="discusion"))
        await wait_for(lambda: '"reload.rejected"' in out.getvalue())
        write(conf, "members.yaml", members(["alice@example.org", "bob@example.net"]))
        await wait_for(lambda: '"reload.loaded"' in out.getvalue())
        records = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    (sent,) = [r for r in records if r["event"] == "notification.sent"]
    assert (sent["notification"], sent["action"], sent["type"], sent["events"]) == ("barred", "log", "message.barred", 1)
    (rejected,) = [r for r in records if r["event"] == "reload.rejected"]
    assert rejected["level"] == "error" and rejected["generation"] == 1 and rejected["trigger"] == "watch"
    assert rejected["count"] == 1 and rejected["errors"][0].startswith(f"{conf / 'members.yaml'}:6:")
    (applied,) = [r for r in records if r["event"] == "reload.applied"]
    assert applied["generation"] == 2 and applied["changes"] == "update MailingList/members"
    (loaded,) = [r for r in records if r["event"] == "reload.loaded"]
    assert (loaded["generation"], loaded["previous"], loaded["lists"]) == (2, 1, 1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for folder in ("lists.d", "routes.d"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def test_serve_log_format_json_writes_only_json_lines_that_follow_a_post(workdir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "--port", str(port), "--http-port", "0",
                             "--log-format", "json"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "LISTKEEPER_STORE": ""})
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "listkeeper serving" in line:
                ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(30), lines
        records = [json.loads(line) for line in lines]
        url = next(r["url"] for r in records if r["event"] == "serve.metrics").removesuffix("/metrics")
        post(port, 1)
        wait_outbox(workdir / "var" / "outbox", 4)
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as health:
            assert (health.status, health.read()) == (200, b"ok\n")
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as scraped:
            metrics = scraped.read().decode()
        assert 'listkeeper_posts_total{list="members",verdict="accept"} 1.0' in metrics
        assert 'listkeeper_deliveries_total{destination="pickup",outcome="delivered"} 4.0' in metrics
        deadline = time.monotonic() + 10
        while not any('"smtp.session"' in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        reader.join(timeout=5)
    records = [json.loads(line) for line in lines]  # every line, to the last, is one JSON object
    assert all(r["event"] and r["time"] and r["level"] for r in records)
    (queue_id,) = next(r for r in records if r["event"] == "smtp.session")["queue_ids"]
    accepted, copies, attempts = follow_one_post(records, queue_id)
    assert accepted["sender"] == "alice@example.org"
    assert [c["list"] for c in copies] == ["members"]
    assert len(attempts) == 4 and all(a["outcome"] == "delivered" for a in attempts)
    assert {r["event"] for r in records} >= {"serve.reconciled", "serve.ready", "smtp.session", "smtp.accepted",
                                             "post.verdict", "post.queued", "delivery.attempt"}
