"""One tick of list events: every due event fires, in dependency order, and its template mails are queued.

Who is eligible is decided by set-based SQL (store/events.py); here only the order of events and the
rendering of template mails (Jinja2's sandbox) happen, all in one transaction per tick."""

from __future__ import annotations

import uuid
from functools import lru_cache
from dataclasses import dataclass
from datetime import datetime, timezone
import quopri
from email.header import Header
from email.utils import format_datetime

from jinja2.sandbox import SandboxedEnvironment

from listkeeper.manifests.events import EventSpec, in_dependency_order
from listkeeper.store import Store
from listkeeper.store import events as store_events
from listkeeper.store import queue as store_queue
from listkeeper.store.queue import InboundRecord, PostRecord

from .snapshot import ListConfig, Snapshot

_env = SandboxedEnvironment(autoescape=False)
CRLF = "\r\n"


@lru_cache(maxsize=256)
def _compiled(source: str):
    return _env.from_string(source)  # compiled once per template, not once per subscriber


@dataclass(frozen=True)
class Fired:
    list_name: str
    event: str
    addresses: tuple[str, ...]


def _header(name: str, value: str) -> bytes:
    value = " ".join(value.split())
    if value.isascii() and len(value) < 900:
        return f"{name}: {value}\r\n".encode()
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(maxlinelen=76, linesep=CRLF)}\r\n".encode()


def template_mail(lst: ListConfig, event: EventSpec, address: str, counters: dict[str, int], hostname: str,
                  now: float) -> bytes:
    """The event's mail to one subscriber. Built directly: thousands go out in one tick, and the email
    package's generator costs a millisecond a message."""
    variables = {"subscriber": {"address": address},
                 "list": {"name": lst.name, "address": lst.spec.address, "description": lst.spec.description},
                 "counters": counters, "event": event.name}
    subject = _compiled(event.template.subject).render(variables)
    body = _compiled(event.template.body).render(variables)
    text = CRLF.join(body.splitlines()) + CRLF
    if text.isascii() and all(len(line) < 990 for line in text.split(CRLF)):
        encoding, payload = "7bit", text.encode()
    else:
        lines = "\n".join(body.splitlines()) + "\n"
        encoding, payload = "quoted-printable", quopri.encodestring(lines.encode("utf-8")).replace(b"\n", b"\r\n")
    head = b"".join((
        _header("From", lst.address_for("owner")), _header("To", address), _header("Subject", subject),
        _header("Date", format_datetime(datetime.fromtimestamp(now, timezone.utc))),
        _header("Message-ID", f"<{uuid.uuid4().hex}@{hostname}>"), _header("Auto-Submitted", "auto-generated"),
        _header("List-Id", f"<{lst.local_part}.{lst.domain}>"), b"MIME-Version: 1.0\r\n",
        b'Content-Type: text/plain; charset="utf-8"\r\n', _header("Content-Transfer-Encoding", encoding)))
    return head + b"\r\n" + payload


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
