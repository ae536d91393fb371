"""A tick as set-based SQL: eligibility against a subscriber-by-subscriber reading, what one fire writes
(on SQLite and PostgreSQL), and template mails rendered per recipient at delivery."""

from __future__ import annotations

import logging
import random
import re
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from listkeeper.engine.events import TemplateMail, template_mail, tick
from listkeeper.engine.snapshot import load_snapshot
from listkeeper.manifests import load_manifests
from listkeeper.manifests.addresses import verp
from listkeeper.manifests.events import EventSpec
from listkeeper.reconcile import reconcile
from listkeeper.store import Store
from listkeeper.store import events as store_events
from listkeeper.store.tables import bounces, deliveries, event_counters, event_fires, messages, subscribers

from .conftest import pickup_routes, wait_for, write
from .test_store import store  # noqa: F401 - the SQLite and PostgreSQL store fixture

NOW = 1_000_000.0
DAY = 86400.0
EVENTS = ("a", "b", "e")


def _dep(event: str, **rule) -> dict:
    return {"event": event, **rule}


SPECS = [
    {"depends": []},
    {"depends": [_dep("a", never=True)]},
    {"depends": [_dep("a", at_least=2)]},
    {"depends": [_dep("a", at_most=1)]},
    {"depends": [_dep("a", exactly=0)]},
    {"depends": [_dep("a", exactly=2)]},
    {"depends": [_dep("a", at_least=0)]},
    {"depends": [_dep("a", at_least=1, at_most=3)]},
    {"depends": [_dep("a", at_least=1), _dep("b", never=True)]},
    {"depends": [_dep("a", at_least=2), _dep("b", at_least=1)]},
    {"depends": [_dep("a", never=True), _dep("b", at_most=1)]},
    {"depends": [_dep("a", at_least=2), _dep("b", never=True)], "match": "any"},
    {"depends": [_dep("a", exactly=1), _dep("b", at_least=3)], "match": "any"},
    {"depends": [], "match": "any"},
    {"depends": [_dep("a", at_least=1)], "repeat": "1d"},
    {"depends": [_dep("b", never=True)], "repeat": "2d"},
    {"depends": [], "repeat": "1d"},
]


def _reference(spec: EventSpec, receiving: set[str], counts: dict[tuple[str, str], tuple[int, float]]) -> list[str]:
    """Who the event fires for, read subscriber by subscriber: what the SQL must compute."""
    def count(address, event):
        return counts.get((address, event), (0, None))[0]

    def holds(address, dep):
        n = count(address, dep.event)
        if dep.never:
            return n == 0
        if dep.exactly is not None:
            return n == dep.exactly
        return (dep.at_least is None or n >= dep.at_least) and (dep.at_most is None or n <= dep.at_most)

    chosen = []
    for address in sorted(receiving):
        results = [holds(address, d) for d in spec.depends]
        ok = all(results) if spec.match == "all" else (any(results) if results else True)
        if spec.repeat:
            last = counts.get((address, spec.name), (0, None))[1]
            due = last is None or last <= NOW - spec.repeat
        else:
            due = count(address, spec.name) == 0
        if ok and due:
            chosen.append(address)
    return chosen


def test_eligibility_is_what_a_subscriber_by_subscriber_reading_gives(store):  # noqa: F811
    rng = random.Random(6)
    states = [("active", "post")] * 6 + [("active", "digest"), ("unsubscribed", "post"), ("disabled", "post"),
                                         ("active", "")]
    people, receiving = [], set()
    for i in range(120):
        address = f"m{i:03d}@d{i % 7}.example"
        state, receives = rng.choice(states)
        people.append(dict(list_name="l", address=address, source="cli", joined_at=NOW, state=state,
                           receives=receives))
        if state == "active" and receives:
            receiving.add(address)
    counts = {}
    for address in [p["address"] for p in people] + ["gone@nowhere.example"]:  # a counter without a subscriber
        for event in EVENTS:
            if rng.random() < 0.6:
                counts[(address, event)] = (rng.choice([0, 1, 1, 2, 3, 4]), NOW - rng.choice([0, 0.5, 1.5, 3]) * DAY)
    with store.engine.begin() as conn:
        conn.execute(insert(subscribers), people)
        conn.execute(insert(event_counters), [dict(list_name="l", address=a, event=e, count=n, last_at=at)
                                              for (a, e), (n, at) in counts.items()])
        for raw in SPECS:
            spec = EventSpec.model_validate({"name": "e", **raw})
            got = conn.execute(store_events.eligible("l", spec, NOW)).scalars().all()
            assert got == _reference(spec, receiving, counts), raw


LIST = """
apiVersion: listkeeper/v1
kind: Domain
metadata: {name: d}
spec: {domain: example.org, hostname: lists.example.org, postmaster: ops@ops.example}
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: club}
spec:
  address: club@example.org
  type: discussion
  description: Der Club
  subscribers:
    - address: anna@example.net
    - address: "o'neil+tag@example.net"
    - address: a=b@example.com
  events:
    - name: hello
      template:
        subject: "Grüße from {{ list.name }}, {{ subscriber.address }}"
        body: |
          Hello {{ subscriber.address }} ({{ event }}),
          {{ list.description }} at {{ list.address }}: joined {{ counters.join }}, hello {{ counters.hello }}.
    - name: again
      repeat: 1d
      depends: [{event: hello, at_least: 1}]
"""


def test_a_tick_counts_logs_and_queues_one_template_message(tmp_path, store):  # noqa: F811
    write(tmp_path / "conf", "club.yaml", LIST)
    reconcile(load_manifests([tmp_path / "conf"]), store)
    members = ["a=b@example.com", "anna@example.net", "o'neil+tag@example.net"]
    fired = tick(store, load_snapshot(store), NOW)
    assert [(f.event, f.count) for f in fired] == [("hello", 3), ("again", 3)]  # again sees hello's fires
    assert tick(store, load_snapshot(store), NOW + 60) == []
    fired = tick(store, load_snapshot(store), NOW + DAY)
    assert [(f.event, f.count) for f in fired] == [("again", 3)]
    with store.engine.connect() as conn:
        assert store_events.counters(conn, "club") == {a: {"join": 1, "hello": 1, "again": 2} for a in members}
        assert store_events.counters(conn, "club", ["anna@example.net"], ["again"]) == {
            "anna@example.net": {"again": 2}}
        assert store_events.events_counted(conn, "club") == ["again", "hello", "join"]
        assert store_events.counters(conn, "club", ["anna@example.net", "nobody@example.org"]) == {
            "anna@example.net": {"join": 1, "hello": 1, "again": 2}}
        assert store_events.fires(conn, "club", "again") == [(a, NOW) for a in members] + [
            (a, NOW + DAY) for a in members]
        stored = conn.execute(select(messages.c.id, messages.c.kind, messages.c.reason, messages.c.mail_from)
                              .where(messages.c.list_name == "club")).all()
        assert [(kind, reason, sender) for _, kind, reason, sender in stored] == [
            ("template", "event hello", "club-bounces@example.org")]
        rows = conn.execute(select(deliveries.c.message_id, deliveries.c.recipient, deliveries.c.return_path,
                                   deliveries.c.state, deliveries.c.next_attempt_at)
                            .order_by(deliveries.c.recipient)).all()
        assert rows == [(stored[0].id, a, verp("club-bounces@example.org", a), "queued", NOW) for a in members]
        assert conn.execute(select(func.count()).select_from(event_fires)).scalar_one() == 3 + 3 + 3 + 3  # join too


def test_the_stored_template_mail_renders_what_template_mail_makes():
    from listkeeper.engine.snapshot import ListConfig
    from listkeeper.manifests.lists import MailingListSpec
    lst = ListConfig("club", MailingListSpec.model_validate({
        "address": "club@example.org", "type": "discussion", "description": "Der Club",
        "events": [{"name": "hello", "template": {"subject": "Grüße {{ counters.n }}", "body": "Hi\n{{ list }}"}}]}))
    event = lst.spec.events[0]
    stored = TemplateMail.from_bytes(TemplateMail.of(lst, event, "lists.example.org", NOW).to_bytes())
    made = template_mail(lst, event, "anna@example.net", {"n": 3}, "lists.example.org", NOW)
    message_id = re.search(rb"Message-ID: (<[^>]+>)", made).group(1).decode()
    assert stored.render("anna@example.net", {"n": 3}, message_id) == made
    with pytest.raises(ValueError, match="not a stored template mail"):
        TemplateMail.from_bytes(b"From: someone\r\n\r\nhello")


def _delivered(outbox: Path) -> dict[str, bytes]:
    """Delivered mail by recipient, without the two lines the pickup folder puts before each."""
    found = {}
    for path in outbox.glob("*.eml"):
        _return_path, delivered_to, data = path.read_bytes().split(b"\r\n", 2)
        found[delivered_to.decode().removeprefix("Delivered-To: ")] = data
    return found


async def test_delivery_renders_each_copy_as_template_mail_does(tmp_path, engine_for):
    conf = tmp_path / "conf"
    write(conf, "club.yaml", LIST)
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(conf)
    now = engine.store.now() - 60
    snapshot = load_snapshot(engine.store)
    tick(engine.store, snapshot, now)
    engine.scheduler.wake()
    members = ["a=b@example.com", "anna@example.net", "o'neil+tag@example.net"]
    got = await wait_for(lambda: (found := _delivered(tmp_path / "outbox")) and len(found) == 3 and found)
    lst = next(iter(snapshot.lists.values()))
    for address in members:
        message_id = message_from_bytes(got[address])["Message-ID"]
        expected = template_mail(lst, lst.spec.events[0], address, {"join": 1, "hello": 1, "again": 1},
                                 "lists.example.org", now)
        assert got[address] == re.sub(rb"Message-ID: <[^>]+>", f"Message-ID: {message_id}".encode(), expected)
    assert "Hello anna@example.net (hello)," in message_from_bytes(got["anna@example.net"]).get_payload()


async def test_a_copy_that_cannot_be_rendered_fails_alone_and_is_reported(tmp_path, engine_for, caplog):
    conf = tmp_path / "conf"
    write(conf, "club.yaml", LIST.replace("{{ list.description }}", "{{ 1 // 0 if subscriber.address[0] == 'a' "
                                                                   "and subscriber.address[1] == '=' else 'x' }}"))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(conf)
    caplog.set_level(logging.INFO)
    tick(engine.store, load_snapshot(engine.store), engine.store.now() - 60)
    engine.scheduler.wake()

    def settled():
        with engine.store.engine.connect() as conn:
            rows = conn.execute(select(deliveries.c.recipient, deliveries.c.state, deliveries.c.last_error)).all()
        return rows if all(state in ("delivered", "failed") for _, state, _ in rows) else None

    rows = {r.recipient: r for r in await wait_for(settled)}
    assert rows["anna@example.net"].state == rows["o'neil+tag@example.net"].state == "delivered"
    assert rows["a=b@example.com"].state == "failed"
    assert rows["a=b@example.com"].last_error == ("the template mail could not be rendered: "
                                                  "ZeroDivisionError: integer division or modulo by zero")
    notice = await wait_for(lambda: _delivered(tmp_path / "outbox").get("ops@ops.example"))
    assert b"a=b@example.com" in notice and b"could not be rendered" in notice
    assert set(_delivered(tmp_path / "outbox")) == {"anna@example.net", "o'neil+tag@example.net", "ops@ops.example"}
    with engine.store.engine.connect() as conn:  # no report to the VERP address: no bounce for the subscriber
        assert conn.execute(select(func.count()).select_from(bounces)).scalar_one() == 0
    assert any("event.render_failed" in r.getMessage() and "a=b@example.com" in r.getMessage()
               for r in caplog.records)


def test_migration_0007_rekeys_the_counters_and_keeps_them(store):  # noqa: F811
    from alembic import command
    from sqlalchemy import inspect

    from listkeeper.store.database import alembic_config
    rows = [dict(list_name="l", address=f"m{i}@example.org", event=e, count=i + 1, last_at=NOW + i)
            for i in range(5) for e in ("join", "daily")]
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0006")
        assert inspect(conn).get_pk_constraint("event_counters")["constrained_columns"] == [
            "list_name", "address", "event"]
        conn.execute(insert(event_counters), rows)
        command.upgrade(alembic_config(conn), "head")
    with store.engine.connect() as conn:
        assert inspect(conn).get_pk_constraint("event_counters")["constrained_columns"] == [
            "list_name", "event", "address"]
        kept = conn.execute(select(event_counters).order_by(event_counters.c.address, event_counters.c.event))
        assert [dict(r._mapping) for r in kept] == sorted(rows, key=lambda r: (r["address"], r["event"]))


async def test_copies_the_store_could_not_serve_are_retried_not_failed(tmp_path, store_url):
    from listkeeper.delivery.scheduler import Scheduler
    from listkeeper.engine.events import TemplateCopies

    class FirstBatchFails:  # the store fails once while a batch's counters are read
        failed = False

        def __init__(self, data: bytes):
            self.copies, self.batch = TemplateCopies.load(data), True

        def for_batch(self, conn, recipients):
            if not FirstBatchFails.failed:
                FirstBatchFails.failed = True
                raise OSError("disk I/O error")
            return self.copies.for_batch(conn, recipients)

    conf = tmp_path / "conf"
    write(conf, "club.yaml", LIST)
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    clock = [NOW]
    store = Store.open(store_url, clock=lambda: clock[0])
    reconcile(load_manifests([conf]), store)
    snapshot = load_snapshot(store)
    tick(store, snapshot, NOW)
    scheduler = Scheduler(store, lambda: snapshot, templates=FirstBatchFails)
    await scheduler.run_once(snapshot)
    with store.engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.state, deliveries.c.last_error)).all()
    assert {tuple(r) for r in rows} == {("deferred", "the template mail was not rendered: OSError: disk I/O error")}
    clock[0] = NOW + DAY
    await scheduler.run_once(snapshot)
    assert len(_delivered(tmp_path / "outbox")) == 3
    store.close()
