"""One tick of list events: every due event fires, in dependency order, and its template mails are queued.

Who is eligible is decided by set-based SQL (store/events.py); here only the order of events and the
rendering of template mails (Jinja2's sandbox) happen, all in one transaction per tick."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from jinja2.sandbox import SandboxedEnvironment

from listkeeper.manifests.events import EventSpec, in_dependency_order
from listkeeper.store import Store
from listkeeper.store import events as store_events
from listkeeper.store import queue as store_queue
from listkeeper.store.queue import InboundRecord, PostRecord

from .snapshot import ListConfig, Snapshot

_env = SandboxedEnvironment(autoescape=False)


@dataclass(frozen=True)
class Fired:
    list_name: str
    event: str
    addresses: tuple[str, ...]


def template_mail(lst: ListConfig, event: EventSpec, address: str, counters: dict[str, int], hostname: str,
                  now: float) -> bytes:
    variables = {"subscriber": {"address": address},
                 "list": {"name": lst.name, "address": lst.spec.address, "description": lst.spec.description},
                 "counters": counters, "event": event.name}
    mail = EmailMessage(policy=SMTP)
    mail["From"] = lst.address_for("owner")
    mail["To"] = address
    mail["Subject"] = _env.from_string(event.template.subject).render(variables).replace("\n", " ")
    mail["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@{hostname}>"
    mail["Auto-Submitted"] = "auto-generated"
    mail["List-Id"] = f"<{lst.local_part}.{lst.domain}>"
    mail.set_content(_env.from_string(event.template.body).render(variables))
    return mail.as_bytes()


def fire(conn, lst: ListConfig, event: EventSpec | None, name: str, addresses: list[str], snapshot: Snapshot,
         now: float) -> Fired:
    """Record the fire and queue the event's template mail to each address."""
    store_events.record_fires(conn, lst.name, name, addresses, now)
    if event is not None and event.template is not None and addresses:
        counts = store_events.counters(conn, lst.name, addresses)
        hostname = snapshot.hostname(lst.domain)
        posts = tuple(PostRecord(lst.name, "queued", f"event {name}",
                                 template_mail(lst, event, a, counts.get(a, {}), hostname, now),
                                 lst.address_for("bounces"), (a,), verp=True) for a in addresses)
        store_queue.spool(conn, [InboundRecord("", (), b"", snapshot.generation, posts)], now)
    return Fired(lst.name, name, tuple(addresses))


def tick(store: Store, snapshot: Snapshot, now: float) -> list[Fired]:
    fired: list[Fired] = []
    with store.engine.begin() as conn:
        for lst in sorted(snapshot.lists.values(), key=lambda item: item.name):
            for event in in_dependency_order(lst.spec.events):
                addresses = list(conn.execute(store_events.eligible(lst.name, event, now)).scalars())
                if addresses:
                    fired.append(fire(conn, lst, event, event.name, addresses, snapshot, now))
    return fired


def fire_by_hand(store: Store, snapshot: Snapshot, list_name: str, event_name: str, addresses: list[str] | None,
                 now: float) -> Fired:
    """An operator fires an event for some subscribers (or all), whatever its dependencies say."""
    lst = next((item for item in snapshot.lists.values() if item.name == list_name), None)
    if lst is None:
        raise LookupError(f"no list {list_name!r}")
    event = next((e for e in lst.spec.events if e.name == event_name), None)
    if event is None and event_name not in ("join", "post"):
        raise LookupError(f"list {list_name} has no event {event_name!r}")
    with store.engine.begin() as conn:
        members = store_events.list_subscribers(conn, list_name)
        chosen = members if addresses is None else [a.lower() for a in addresses]
        unknown = sorted(set(chosen) - set(members))
        if unknown:
            raise LookupError(f"not subscribed to {list_name}: {', '.join(unknown)}")
        return fire(conn, lst, event, event_name, chosen, snapshot, now)
