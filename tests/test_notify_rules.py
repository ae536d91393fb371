"""Notifications without the engine: the event catalogue, conditions, the max_frequency gate, the inbox
(threads, transactions), what logs may say of a URL, and the manifest's validation."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from listkeeper import notify
from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.notifications import Conditions, EmailAction, MaxFrequency
from listkeeper.notify import bus
from listkeeper.notify.actions import Notice, default_body, render_email, shown_url, signature
from listkeeper.notify.bus import Inbox, InvalidEvent, make_event
from listkeeper.notify.conditions import Gate, holds

from .conftest import REPO, write

BERLIN = ZoneInfo("Europe/Berlin")


def at(local: str) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=BERLIN).timestamp()


def barred(when: float = 0.0, sender: str = "spam@bad.example", **more) -> notify.SystemEvent:
    attributes = {"sender": sender, "address": "members@example.org", "recipients": ("members@example.org",),
                  "remote_ip": "192.0.2.1", "rule": "barring.sender", "reason": "listed", **more}
    return make_event("message.barred", attributes, when)


def connection(server="smtp.relay.example.net", port=587, tls="starttls", auth=True, when=0.0):
    return make_event("smtp.connection_failed", {"server": server, "port": port, "tls": tls, "auth": auth,
                                                 "error": "refused", "stage": "connect"}, when)


# --- the catalogue ------------------------------------------------------------------------------------------

def test_events_are_typed_by_the_catalogue():
    event = connection()
    assert event.type == "smtp.connection_failed" and event.attributes["port"] == 587
    with pytest.raises(TypeError):
        event.attributes["port"] = 25  # immutable
    assert make_event("bounce.disabled", {"list": "m", "address": "a@b.org", "score": 5, "threshold": 5},
                      0).attributes["score"] == 5.0  # an int is a fine float
    problems = [
        ("nonsense", {}, "unknown event type"),
        ("config.applied", {"generation": 1}, "needs the attribute 'source'"),
        ("config.applied", {"generation": "1", "source": "x"}, "generation must be int, not str"),
        ("config.applied", {"generation": True, "source": "x"}, "generation must be int, not bool"),
        ("config.applied", {"generation": 1, "source": "x", "extra": 1}, "has no attribute 'extra'"),
    ]
    for type_, attributes, message in problems:
        with pytest.raises(InvalidEvent, match=message):
            make_event(type_, attributes, 0)
    optional = make_event("event.fired", {"list": "m", "event": "daily", "subscribers": 3, "source": "tick"}, 0)
    assert "address" not in optional.attributes
    assert barred().as_json()["attributes"]["recipients"] == ["members@example.org"]


async def test_emit_never_raises_and_reaches_only_inboxes_that_want_the_type(caplog):
    inbox = Inbox(asyncio.get_running_loop(), clock=lambda: 1234.0)
    inbox.wanted = frozenset({"config.applied"})
    bus.attach(inbox)
    try:
        assert notify.emit("config.applied", generation="not a number", source="x") is None  # logged, not raised
        assert "system event config.applied not emitted" in caplog.text
        assert notify.emit("message.barred", sender="x") is None  # no rule wants it: not even built
        event = notify.emit("config.applied", generation=3, source="test")
        assert event.at == 1234.0  # the engine's clock
        assert await inbox.take(1) == [event]
    finally:
        bus.detach(inbox)
    assert notify.emit("config.applied", generation=4, source="test") is None  # nobody attached


async def test_threads_emit_without_waiting_and_the_inbox_keeps_every_event_up_to_its_limit():
    inbox = Inbox(asyncio.get_running_loop(), clock=lambda: 0.0, limit=1000)
    bus.attach(inbox)
    try:
        def burst(n: int) -> None:
            for i in range(n):
                notify.emit("config.applied", generation=i, source=threading.current_thread().name)

        threads = [threading.Thread(target=burst, args=(300,), name=f"t{k}") for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        taken: list = []
        for _ in range(20):
            taken += await inbox.take(0.05)
        assert len(taken) == 1000 and inbox.dropped == 200  # bounded: the rest is counted, never waited for
        for name in ("t0", "t1", "t2", "t3"):  # each thread's events in its own order
            mine = [e.attributes["generation"] for e in taken if e.attributes["source"] == name]
            assert mine == sorted(mine)
    finally:
        bus.detach(inbox)


async def test_on_commit_announces_after_commit_and_forgets_on_rollback(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    inbox = Inbox(asyncio.get_running_loop(), clock=lambda: 0.0)
    bus.attach(inbox)
    try:
        with engine.begin() as conn:
            conn.execute(text("create table t (x int)"))
            notify.on_commit(conn, "config.applied", generation=1, source="committed")
            assert await inbox.take(0.05) == []  # not before the commit
        (event,) = await inbox.take(1)
        assert event.attributes["source"] == "committed"
        with pytest.raises(RuntimeError):
            with engine.begin() as conn:
                notify.on_commit(conn, "config.applied", generation=2, source="rolled back")
                raise RuntimeError("the transaction fails")
        with engine.begin() as conn:
            conn.execute(text("insert into t values (1)"))  # a later commit on a pooled connection
        assert await inbox.take(0.1) == []
    finally:
        bus.detach(inbox)
        engine.dispose()


# --- conditions ------------------------------------------------------------------------------------------

OFFICE = Conditions.model_validate({"time": {"from": "08:00", "to": "18:00"}, "days": ["mon", "tue", "wed", "thu",
                                    "fri"], "timezone": "Europe/Berlin"})
NIGHT = Conditions.model_validate({"time": {"from": "22:00", "to": "06:00"}, "timezone": "Europe/Berlin"})


@pytest.mark.parametrize("conditions, local, expected", [
    (OFFICE, "2030-03-04T08:00", True),  # Monday
    (OFFICE, "2030-03-04T07:59", False),
    (OFFICE, "2030-03-04T17:59", True),
    (OFFICE, "2030-03-04T18:00", False),
    (OFFICE, "2030-03-09T10:00", False),  # Saturday
    (OFFICE, "2030-07-05T08:30", True),  # summer time
    (NIGHT, "2030-03-04T23:00", True),  # across midnight
    (NIGHT, "2030-03-05T05:59", True),
    (NIGHT, "2030-03-05T06:00", False),
    (NIGHT, "2030-03-04T12:00", False),
])
def test_time_of_day_and_days_are_local_to_the_rule(conditions, local, expected):
    assert holds(conditions, barred(at(local))) is expected


@pytest.mark.parametrize("conditions, event, expected", [
    ({"server": ["smtp.*.example.net"]}, connection(), True),
    ({"server": ["SMTP.RELAY.example.NET"]}, connection(), True),  # globs ignore case
    ({"server": ["mx.example.org", "other"]}, connection(), False),
    ({"port": [465, 587]}, connection(), True),
    ({"port": [25]}, connection(), False),
    ({"tls": ["starttls"]}, connection(), True),
    ({"tls": ["none", "implicit"]}, connection(), False),
    ({"auth": True}, connection(), True),
    ({"auth": False}, connection(), False),
    ({"address": ["*@example.org"]}, barred(), True),
    ({"sender": ["*@bad.example"], "address": ["*@example.org"]}, barred(), True),
    ({"sender": ["*@good.example"], "address": ["*@example.org"]}, barred(), False),  # all must hold
    ({"list": ["members"]}, make_event("moderation.held", {"list": "members", "sender": "a@b.org", "subject": "",
                                                           "reason": "r", "message_id": 1}, 0), True),
    ({"list": ["club"]}, make_event("moderation.held", {"list": "members", "sender": "a@b.org", "subject": "",
                                                        "reason": "r", "message_id": 1}, 0), False),
    ({"address": ["*"]}, make_event("event.fired", {"list": "m", "event": "e", "subscribers": 2,
                                                    "source": "tick"}, 0), False),  # no address: no match
])
def test_attribute_conditions(conditions, event, expected):
    assert holds(Conditions.model_validate(conditions), event) is expected


def test_the_gate_counts_what_it_holds_back_and_the_next_run_carries_it():
    gate, every = Gate(), MaxFrequency(every="15m", per=["server"])
    t0 = 1_000_000.0
    assert gate.admit("r", every, connection(when=t0)).count == 1
    assert gate.admit("r", every, connection(when=t0 + 60)) is None
    assert gate.admit("r", every, connection(when=t0 + 120)) is None
    assert gate.admit("r", every, connection(server="other", when=t0 + 130)).count == 1  # per server
    assert gate.admit("other-rule", every, connection(when=t0 + 140)).count == 1  # per rule
    assert gate.held_back("r") == 2
    later = gate.admit("r", every, connection(when=t0 + 900))
    assert (later.count, later.since) == (3, t0)
    assert gate.admit("r", every, connection(when=t0 + 901)) is None
    assert gate.admit("r", None, connection(when=t0 + 902)).count == 1  # no max_frequency: always


def test_the_gate_forgets_closed_windows_that_held_nothing_back():
    gate, every = Gate(), MaxFrequency(every=10, per=["sender"])
    for i in range(2500):
        gate.admit("r", every, barred(when=float(i * 20), sender=f"s{i}@x.example"))
    assert len(gate._windows) < 1000


# --- what actions say and send -------------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("https://hooks.example.org/services/T0KEN/B1?x=SECRET", "https://hooks.example.org/…"),
    ("https://user:PASS@hooks.example.org:8443/a", "https://hooks.example.org:8443/…"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
])
def test_logs_show_only_scheme_host_and_port_of_a_url(url, shown):
    assert shown_url(url) == shown


def test_the_signature_is_hmac_sha256_of_the_body():
    # the value any receiver computes: hmac.new(secret, body, sha256).hexdigest()
    assert signature("key", b"The quick brown fox jumps over the lazy dog") == \
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_email_templates_render_in_the_sandbox():
    notice = Notice("relay-down", connection(when=at("2030-03-04T09:00")), count=3,
                    since=at("2030-03-04T08:45"))
    action = EmailAction.model_validate({"type": "email", "to": ["ops@example.org"],
                                         "body": "{{ event.attributes.server }}: {{ count }}"})
    subject, body = render_email(action, notice)
    assert subject == "[listkeeper] smtp.connection_failed (3 times)"
    assert body == "smtp.relay.example.net: 3"
    assert "  server: smtp.relay.example.net" in default_body(notice)
    assert "It stands for 3 events since 2030-03-04T07:45:00Z" in default_body(notice)
    unsafe = EmailAction.model_validate({"type": "email", "to": ["ops@example.org"],
                                         "body": "{{ event.__class__.__mro__ }}"})
    with pytest.raises(Exception, match="email template: SecurityError"):
        render_email(unsafe, notice)


# --- the manifest ------------------------------------------------------------------------------------------

def test_the_example_validates():
    found = load_manifests([REPO / "examples" / "notifications.yaml"])
    assert sorted(r.name for r in found.of_kind("Notification")) == [
        "bounces-to-chat", "held-in-office-hours", "refused-mail", "relay-down"]
    assert len(found.of_kind("Report")) == 3


@pytest.mark.parametrize("spec, message", [
    ("on: [nonsense]\n  actions: [{type: log, path: x}]", "spec.on: unknown event type 'nonsense'"),
    ("on: [subscription.changed]\n  conditions: {server: [x]}\n  actions: [{type: log, path: x}]",
     "spec.conditions.server: subscription.changed has no attribute 'server'"),
    ("on: [moderation.held]\n  conditions: {list: [nope]}\n  actions: [{type: log, path: x}]",
     "spec.conditions.list[0]: no MailingList named 'nope'"),
    ("on: [message.barred]\n  max_frequency: {every: 5m, per: [server]}\n  actions: [{type: log, path: x}]",
     "spec.max_frequency.per[0]: message.barred has no attribute 'server'"),
    ("on: [delivery.failed]\n  actions: [{type: email, to: [a@example.org]}]",
     "spec.actions[0]: an email action on delivery.failed needs max_frequency"),
    ("on: [message.barred]\n  conditions: {time: {from: '8:00', to: '18:00'}}\n  actions: [{type: log, path: x}]",
     "spec.conditions.time.from: '8:00' is not a time of day"),
    ("on: [message.barred]\n  conditions: {timezone: Mars/Olympus}\n  actions: [{type: log, path: x}]",
     "spec.conditions.timezone: unknown time zone 'Mars/Olympus'"),
    ("on: [message.barred]\n  actions: [{type: webhook, url: 'ftp://x'}]", "spec.actions[0].url: expected an http(s) URL"),
    ("on: [message.barred]\n  actions: [{type: webhook, url: 'https://x.example', secret: inline}]",
     "spec.actions[0].secret: inline secrets are not allowed"),
    ("on: [message.barred]\n  actions: [{type: email, to: [a@example.org], subject: '{{ x'}]",
     "spec.actions[0].subject: the template does not compile"),
    ("on: [message.barred]\n  actions: [{type: sms, to: x}]", "spec.actions[0].type: expected one of"),
    ("on: [message.barred]\n  actions: []", "spec.actions: List should have at least 1 item"),
])
def test_validation_names_the_field_and_what_is_wrong(tmp_path, spec, message):
    path = write(tmp_path, "n.yaml", "apiVersion: listkeeper/v1\nkind: Notification\nmetadata: {name: n}\n"
                                     f"spec:\n  {spec}\n")
    with pytest.raises(ManifestErrors) as raised:
        load_manifests([path])
    assert any(message in str(e) and str(e).startswith(f"{path}:") for e in raised.value.errors), \
        [str(e) for e in raised.value.errors]
