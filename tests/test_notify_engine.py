"""Notifications end to end: the real engine on loopback emits system events; a real HTTP server receives
the signed web hooks, the pickup folder the email actions, a file the log lines; time comes from an
injected clock."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timezone
from email import message_from_bytes
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from listkeeper.notify.dispatch import ACTION_SLOTS

from .conftest import DOMAIN, REPO, pickup_routes, tagged_verp, wait_for, write
from .test_relay import free_port
from .test_serve import LISTS, message, send
from .webhooks import Hooks

BARRING = """
apiVersion: listkeeper/v1
kind: Barring
metadata: {name: spam}
spec:
  senders: ["spam*@bad.example"]
"""


def notification(name: str, on: str, actions: str, extra: str = "") -> str:
    return f"""
apiVersion: listkeeper/v1
kind: Notification
metadata: {{name: {name}}}
spec:
  on: [{on}]
{extra}
  actions:
{actions}
"""


def make_conf(tmp_path: Path, *notifications: str) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "barring.yaml", BARRING)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(folder, "notifications.yaml", "---\n".join(notifications))
    return folder


async def barred(port: int, sender: str = "spam@bad.example") -> None:
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await send(port, sender, ["members@example.org"], message(sender, "members@example.org", "Buy"))


def logged(caplog) -> str:
    """What the process logged, but for the test's own web hook receiver's access log."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def outbox(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "outbox"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


@pytest.fixture
async def hooks():
    started: list[Hooks] = []

    async def start(**options) -> Hooks:
        hook = await Hooks(**options).start()
        started.append(hook)
        return hook

    yield start
    for hook in started:
        await hook.close()


async def test_barred_mail_posts_a_signed_web_hook_and_logs_a_line(tmp_path, engine_for, hooks, monkeypatch,
                                                                   caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HOOK_SECRET", "s3cret-hmac-key")
    hook = await hooks()
    log_file = tmp_path / "var" / "events.jsonl"
    conf = make_conf(tmp_path, notification("refused", "message.barred", f"""
    - type: webhook
      url: {hook.url}/listkeeper
      secret: {{env: HOOK_SECRET}}
    - type: log
      path: {log_file}"""))
    engine = await engine_for(conf)
    await barred(engine.port)
    await wait_for(lambda: hook.received and lines(log_file))
    (request,) = hook.received
    assert request.path == "/listkeeper"
    assert request.signed_with("s3cret-hmac-key") and not request.signed_with("another key")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Listkeeper-Event"] == "message.barred"
    body = request.json
    assert body["notification"] == "refused" and body["count"] == 1 and body["previous_run"] is None
    event = body["event"]
    assert event["type"] == "message.barred" and request.headers["X-Listkeeper-Delivery"] == event["id"]
    assert event["attributes"] == {"sender": "spam@bad.example", "address": "", "recipients": [],
                                   "remote_ip": "127.0.0.1", "rule": "barring.sender",
                                   "reason": event["attributes"]["reason"]}
    assert datetime.fromisoformat(event["at"].replace("Z", "+00:00")).tzinfo == timezone.utc
    (line,) = lines(log_file)
    assert line == body  # the log line is the same document, one per event
    assert "s3cret-hmac-key" not in logged(caplog)


async def test_a_failing_web_hook_is_retried_with_backoff_and_its_url_never_logged(tmp_path, engine_for, hooks,
                                                                                  monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    hook = await hooks(statuses=[500, 503])
    monkeypatch.setenv("HOOK_URL", f"{hook.url}/hooks/T0KEN-in-the-path?key=QUERY-SECRET")
    conf = make_conf(tmp_path, notification("refused", "message.barred", """
    - type: webhook
      url: {env: HOOK_URL}
      retries: 2
      backoff: 0.3s"""))
    engine = await engine_for(conf)
    await barred(engine.port)
    await wait_for(lambda: len(hook.received) == 3 and engine.notifications.running == 0)
    first, second, third = hook.received
    assert first.body == second.body == third.body  # the same delivery, the same id, sent again
    assert len({r.headers["X-Listkeeper-Delivery"] for r in hook.received}) == 1
    assert second.at - first.at >= 0.3 and third.at - second.at >= 0.6  # the backoff doubles
    assert f"web hook {hook.url}/…: HTTP 500; attempt 2 of 3 follows" in caplog.text
    assert f"web hook {hook.url}/… answered 200" in caplog.text
    assert "T0KEN" not in logged(caplog) and "QUERY-SECRET" not in logged(caplog)


async def test_a_web_hook_refusing_with_4xx_is_not_retried_and_other_actions_still_run(tmp_path, engine_for, hooks,
                                                                                     caplog):
    hook = await hooks(statuses=[403])
    closed = free_port()  # nothing listens here
    log_file = tmp_path / "events.jsonl"
    conf = make_conf(tmp_path, notification("refused", "message.barred", f"""
    - type: webhook
      url: http://127.0.0.1:{closed}/nobody-home
      retries: 1
      backoff: 0.1s
    - type: webhook
      url: {hook.url}/refuses
      retries: 3
    - type: log
      path: {log_file}"""))
    engine = await engine_for(conf)
    await barred(engine.port)
    await wait_for(lambda: engine.notifications.done == 3)
    assert len(hook.received) == 1  # 403 is final
    assert len(lines(log_file)) == 1
    assert f"webhook {hook.url}/… failed for message.barred" in caplog.text and "HTTP 403" in caplog.text
    assert (f"webhook http://127.0.0.1:{closed}/… failed for message.barred" in caplog.text
            and "(after 2 attempt(s))" in caplog.text)
    # and the engine still does its work
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("alice@example.org", "members@example.org", "Still here"))
    await wait_for(lambda: len(outbox(tmp_path)) == 4)


async def test_a_web_hook_that_never_answers_does_not_slow_posts(tmp_path, engine_for, hooks):
    hook = await hooks(hang=True)
    log_file = tmp_path / "events.jsonl"
    conf = make_conf(tmp_path, notification("refused", "message.barred", f"""
    - type: webhook
      url: {hook.url}/stuck
      timeout: 20s
      retries: 0
    - type: log
      path: {log_file}"""))
    engine = await engine_for(conf)
    # the baseline: posts alone, before any web hook hangs
    started = time.monotonic()
    for i in range(5):
        await send(engine.port, "alice@example.org", ["members@example.org"],
                   message("alice@example.org", "members@example.org", f"before {i}"))
    await wait_for(lambda: len(outbox(tmp_path)) == 20)
    baseline = time.monotonic() - started
    # now every post follows a refused message whose web hook hangs
    started = time.monotonic()
    for i in range(5):
        await barred(engine.port)
        await send(engine.port, "alice@example.org", ["members@example.org"],
                   message("alice@example.org", "members@example.org", f"during {i}"))
    await wait_for(lambda: len(outbox(tmp_path)) == 40)
    during = time.monotonic() - started
    await wait_for(lambda: len(lines(log_file)) == 5)  # the log action of the same rule is not held up
    assert hook.waiting == ACTION_SLOTS  # the web hooks are still waiting for an answer (at most 4 at once) ...
    assert during < 5.0 and during < baseline * 3 + 1.0, (baseline, during)  # ... and posts flowed meanwhile
    assert len(hook.received) == ACTION_SLOTS


async def test_max_frequency_counts_what_it_holds_back_per_attribute(tmp_path, engine_for):
    log_file = tmp_path / "events.jsonl"
    conf = make_conf(tmp_path, notification("refused", "message.barred", f"""
    - type: log
      path: {log_file}""", "  max_frequency: {every: 15m, per: [sender]}"))
    engine = await engine_for(conf)
    now = [datetime(2030, 3, 4, 9, 0, tzinfo=timezone.utc).timestamp()]
    engine.store.clock = lambda: now[0]
    for _ in range(3):
        await barred(engine.port, "spam1@bad.example")
    await barred(engine.port, "spam2@bad.example")  # another sender: its own window
    await wait_for(lambda: len(lines(log_file)) == 2)
    now[0] += 10 * 60
    await barred(engine.port, "spam1@bad.example")  # still inside the window: counted
    now[0] += 6 * 60
    await barred(engine.port, "spam1@bad.example")  # the window is over: runs, carrying the count
    await wait_for(lambda: len(lines(log_file)) == 3)
    first, other, later = lines(log_file)
    assert (first["event"]["attributes"]["sender"], first["count"]) == ("spam1@bad.example", 1)
    assert (other["event"]["attributes"]["sender"], other["count"]) == ("spam2@bad.example", 1)
    assert (later["event"]["attributes"]["sender"], later["count"]) == ("spam1@bad.example", 4)
    assert later["previous_run"] == "2030-03-04T09:00:00Z" and later["event"]["at"] == "2030-03-04T09:16:00Z"


async def test_time_of_day_and_weekday_conditions_follow_the_injected_clock(tmp_path, engine_for):
    office, every = tmp_path / "office.jsonl", tmp_path / "every.jsonl"
    conf = make_conf(tmp_path,
                     notification("office-hours", "message.barred", f"""
    - type: log
      path: {office}""", """  conditions:
    time: {from: "08:00", to: "18:00"}
    days: [mon, tue, wed, thu, fri]
    timezone: Europe/Berlin"""),
                     notification("always", "message.barred", f"""
    - type: log
      path: {every}"""),
                     notification("switched-off", "message.barred", f"""
    - type: log
      path: {tmp_path / 'never.jsonl'}""", "  enabled: false"))
    engine = await engine_for(conf)
    berlin = [  # (local time in Berlin, in office hours)
        ("2030-03-02T10:00", False),  # a Saturday
        ("2030-03-04T07:30", False),  # Monday, too early
        ("2030-03-04T08:00", True),
        ("2030-03-04T17:59", True),
        ("2030-03-04T18:00", False),
        ("2030-07-05T09:00", True),  # Friday in summer time (UTC+2)
    ]
    for i, (local, _) in enumerate(berlin):
        at = datetime.fromisoformat(local + ("+02:00" if local.startswith("2030-07") else "+01:00")).timestamp()
        engine.store.clock = lambda at=at: at
        await barred(engine.port)
        await wait_for(lambda: len(lines(every)) == i + 1)  # the rule without conditions saw it: so did the other
    stamps = {line["event"]["at"] for line in lines(office)}
    expected = {datetime.fromisoformat(local + ("+02:00" if local.startswith("2030-07") else "+01:00"))
                .astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for local, ok in berlin if ok}
    assert stamps == expected
    assert not (tmp_path / "never.jsonl").exists()  # a rule that is not enabled runs nothing


async def test_email_action_is_queued_through_the_engine(tmp_path, engine_for):
    conf = make_conf(tmp_path, notification("held", "moderation.held", """
    - type: email
      from: listkeeper@example.org
      to: [ops@example.org]
      subject: "Held on {{ event.attributes.list }}: {{ event.attributes.subject }}"
      body: |
        {{ event.attributes.sender }} wrote to {{ event.attributes.list }}.
          reason: {{ event.attributes.reason }}""", """  conditions:
    list: [club]"""))
    engine = await engine_for(conf)
    await send(engine.port, "alice@example.org", ["club@example.org"],
               message("alice@example.org", "club@example.org", "Please approve"))
    await wait_for(lambda: any("ops@example.org" in p.name for p in outbox(tmp_path)))
    (path,) = [p for p in outbox(tmp_path) if "ops@example.org" in p.name]
    mail = message_from_bytes(path.read_bytes())
    assert mail["Return-Path"] == "<>"  # a null sender: its failure is never bounced nor mailed about again
    assert mail["From"] == "listkeeper@example.org" and mail["To"] == "ops@example.org"
    assert mail["Subject"] == "Held on club: Please approve"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["X-Listkeeper-Notification"] == "held"
    body = mail.get_payload(decode=True).decode()
    assert "alice@example.org wrote to club." in body
    assert "  reason: moderated: every post to a moderated list is held" in body


def install_example_provider(tmp_path: Path, monkeypatch) -> None:
    """What `pip install ./examples/provider` leaves behind, made by setuptools from its pyproject.toml:
    its metadata with the entry point, and its module, on the path."""
    target = tmp_path / "site"
    target.mkdir()
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "egg_info",
                    "--egg-base", str(target)], cwd=REPO / "examples" / "provider", check=True,
                   capture_output=True)
    monkeypatch.syspath_prepend(str(REPO / "examples" / "provider"))
    monkeypatch.syspath_prepend(str(target))


async def test_the_example_provider_is_called_through_its_entry_point(tmp_path, engine_for, hooks, monkeypatch):
    install_example_provider(tmp_path, monkeypatch)
    chat = await hooks()
    monkeypatch.setenv("CHAT_URL", f"{chat.url}/chat")
    conf = make_conf(tmp_path, notification("to-chat", "subscription.changed", """
    - type: provider
      name: chat
      options: {url_env: CHAT_URL, channel: "#lists"}
    - type: provider
      name: not-installed"""))
    engine = await engine_for(conf)
    lst = next(item for item in engine.snapshot.lists.values() if item.name == "members")
    async with aiohttp.ClientSession() as http:
        async with http.post(engine.links.url(engine.snapshot, lst, "bob@example.net"),
                             data={"List-Unsubscribe": "One-Click"}) as done:
            assert done.status == 200
    await wait_for(lambda: chat.received and engine.notifications.done == 2)
    (request,) = chat.received
    body = request.json
    assert body["channel"] == "#lists"
    assert body["text"].startswith("[to-chat] subscription.changed at ")
    assert body["text"].endswith("list=members, address=bob@example.net, action=leave, source=web")


async def test_delivery_trouble_is_announced(tmp_path, engine_for):
    """A relay nobody listens on: the connection fails, each delivery is deferred; a permanent failure
    (no route) is final."""
    closed = free_port()
    log_file = tmp_path / "events.jsonl"
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", f"""
        apiVersion: listkeeper/v1
        kind: Relay
        metadata: {{name: smarthost}}
        spec: {{host: 127.0.0.1, port: {closed}, tls: none, timeout: 5s}}
        ---
        apiVersion: listkeeper/v1
        kind: RoutingTable
        metadata: {{name: default}}
        spec:
          routes:
            - {{match: example.org, transport: relay, relay: smarthost}}
            - {{match: example.net, transport: pickup, folder: {tmp_path / "outbox"}}}
        """)
    write(folder, "notifications.yaml", notification(
        "trouble", "smtp.connection_failed, delivery.failed, delivery.final_failed", f"""
    - type: log
      path: {log_file}"""))
    engine = await engine_for(folder)
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("alice@example.org", "members@example.org", "Hello"))
    # alice and chair (example.org) are deferred; carol (example.com) has no route: failed for good (and the
    # postmaster's notice of that, with a null sender, is deferred at the relay as well)
    members = {"alice@example.org", "chair@example.org", "carol@example.com"}

    def about_the_post():
        return [x["event"] for x in lines(log_file) if x["event"]["attributes"].get("address") in members]

    await wait_for(lambda: len(about_the_post()) == 3)
    events = [x["event"] for x in lines(log_file)]
    connection = next(e for e in events if e["type"] == "smtp.connection_failed")
    assert connection["attributes"] == {"server": "127.0.0.1", "port": closed, "tls": "none", "auth": False,
                                        "stage": "connect", "error": connection["attributes"]["error"]}
    assert connection["attributes"]["error"].startswith(f"127.0.0.1:{closed}: cannot connect")
    deferred = sorted((e["attributes"]["address"], e["attributes"]["attempts"], e["attributes"]["destination"])
                      for e in about_the_post() if e["type"] == "delivery.failed")
    assert deferred == [("alice@example.org", 1, "relay:smarthost"), ("chair@example.org", 1, "relay:smarthost")]
    (final,) = [e for e in events if e["type"] == "delivery.final_failed"]
    assert final["attributes"]["address"] == "carol@example.com" and final["attributes"]["reason"] == "permanent"
    assert final["attributes"]["sender"].startswith("members-bounces+carol=example.com+")  # the tagged VERP


async def test_list_events_and_config_changes_are_announced(tmp_path, engine_for):
    log_file = tmp_path / "events.jsonl"
    folder = tmp_path / "conf"
    write(folder, "events.yaml", (REPO / "examples" / "events.yaml").read_text())
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(folder, "notifications.yaml", notification("fires", "event.fired", f"""
    - type: log
      path: {log_file}"""))
    await engine_for(folder, tick_interval=0.1)
    await wait_for(lambda: lines(log_file))
    first = lines(log_file)[0]["event"]
    assert first["attributes"] == {"list": "newcomers", "event": "daily", "subscribers": 2, "source": "tick"}


def test_serve_announces_the_configuration_it_applied(tmp_path):
    log_file = tmp_path / "config.jsonl"
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(folder, "notifications.yaml", notification("config", "config.applied, config.rejected", f"""
    - type: log
      path: {log_file}"""))
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", str(folder), "--port", "0", "--no-http",
                             "--store", f"sqlite:///{tmp_path / 'lk.db'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not lines(log_file) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    (line,) = lines(log_file)
    assert line["event"]["type"] == "config.applied"
    assert line["event"]["attributes"] == {"generation": 1, "source": "serve"}


def test_hot_reloads_announce_what_they_applied_and_refused(tmp_path):
    log_file = tmp_path / "config.jsonl"
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(folder, "notifications.yaml", notification("config", "config.applied, config.rejected", f"""
    - type: log
      path: {log_file}"""))
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", str(folder), "--port", "0", "--no-http",
                             "--store", f"sqlite:///{tmp_path / 'lk.db'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_lines(count: int) -> list:
        deadline = time.monotonic() + 30
        while len(lines(log_file)) < count and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        return lines(log_file)

    try:
        wait_lines(1)
        write(folder, "lists.yaml", LISTS.replace("type: discussion", "type: chatty", 1))  # invalid
        rejected = wait_lines(2)[1]["event"]
        write(folder, "lists.yaml", LISTS)  # valid again
        applied = wait_lines(3)[2]["event"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert rejected["type"] == "config.rejected" and rejected["attributes"]["errors"] >= 1
    assert "lists.yaml:6:3: spec.type: Input should be" in rejected["attributes"]["error"]
    assert applied["type"] == "config.applied"
    assert applied["attributes"] == {"generation": 2, "source": "reload"}


async def test_bounces_and_commands_by_mail_are_announced_after_their_transaction(tmp_path, engine_for):
    from .test_bounce_reports import sample
    from .test_bounces import LIST

    log_file = tmp_path / "events.jsonl"
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LIST.replace("  type: discussion\n", "  type: discussion\n  bounces: {threshold: 1}\n"))
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    write(folder, "notifications.yaml", notification(
        "members", "bounce.disabled, subscription.changed, event.fired", f"""
    - type: log
      path: {log_file}"""))
    engine = await engine_for(folder, housekeeping_interval=0.1)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=engine.port, start_tls=False) as smtp:
        await smtp.mail("")  # a bounce, to alice's (tagged) VERP address
        await smtp.rcpt(tagged_verp(engine.store, "alice@example.net"))
        assert (await smtp.data(sample("postfix.eml"))).code == 250
    for sender, command in (("bob@example.net", "digest on"), ("kim@example.net", "event join")):
        await send(engine.port, sender, ["members-request@example.org"],
                   f"From: {sender}\r\nTo: members-request@example.org\r\nSubject: {command}\r\n\r\n".encode())
    await wait_for(lambda: len(lines(log_file)) == 4)
    seen = {(x["event"]["type"], tuple(sorted(x["event"]["attributes"].items()))) for x in lines(log_file)}
    assert seen == {
        ("bounce.disabled", (("address", "alice@example.net"), ("list", "members"), ("score", 1.0),
                             ("threshold", 1.0))),
        ("subscription.changed", (("action", "disabled"), ("address", "alice@example.net"), ("list", "members"),
                                  ("source", "bounce"))),
        ("subscription.changed", (("action", "digest_on"), ("address", "bob@example.net"), ("list", "members"),
                                  ("source", "mail"))),
        ("event.fired", (("address", "kim@example.net"), ("event", "join"), ("list", "members"), ("source", "mail"),
                         ("subscribers", 1))),
    }
