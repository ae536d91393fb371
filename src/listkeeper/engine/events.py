"""One tick of list events: every due event fires, in dependency order, and its template mail is queued.

Who is eligible is decided by set-based SQL (store/events.py), and so is a fire: however many
subscribers it reaches, it is a few statements (counters, the fire log, one stored template mail and a
delivery row per recipient), all in one transaction per tick. The template is rendered per recipient
at delivery (`TemplateCopies`, used by the delivery scheduler), with that recipient's counters."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from functools import lru_cache
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
import quopri
from email.header import Header
from email.utils import format_datetime

from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.engine import Connection

from listkeeper import notify
from listkeeper.manifests.events import EventSpec, in_dependency_order
from listkeeper.store import Store
from listkeeper.store import events as store_events
from listkeeper.store import queue as store_queue

from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.events")
_env = SandboxedEnvironment(autoescape=False)
CRLF = "\r\n"
FORMAT = "listkeeper template mail v1"  # the stored message's first line: what this module can render


@lru_cache(maxsize=256)
def _compiled(source: str):
    return _env.from_string(source)  # compiled once per template, not once per subscriber


@dataclass(frozen=True)
class Fired:
    list_name: str
    event: str
    count: int  # how many subscribers it fired for


def _header(name: str, value: str) -> bytes:
    value = " ".join(value.split())
    if value.isascii() and len(value) < 900:
        return f"{name}: {value}\r\n".encode()
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(maxlinelen=76, linesep=CRLF)}\r\n".encode()


@dataclass(frozen=True)
class TemplateMail:
    """An event's template mail but for who gets it: everything else it is made from, fixed when the
    event fires. Stored once per (list, event, tick) as the queued message; each recipient's copy is
    rendered from it at delivery."""

    list_name: str
    list_address: str
    description: str
    sender: str  # the list's owner address
    list_id: str
    event: str
    subject: str
    body: str
    hostname: str
    at: float  # when the event fired: the mail's Date

    @classmethod
    def of(cls, lst: ListConfig, event: EventSpec, hostname: str, now: float) -> "TemplateMail":
        return cls(lst.name, lst.spec.address, lst.spec.description, lst.address_for("owner"),
                   f"<{lst.local_part}.{lst.domain}>", event.name, event.template.subject, event.template.body,
                   hostname, now)

    def render(self, address: str, counters: dict[str, int], message_id: str | None = None) -> bytes:
        """The mail to one subscriber. Built directly: thousands go out in one tick, and the email
        package's generator costs a millisecond a message."""
        variables = {"subscriber": {"address": address},
                     "list": {"name": self.list_name, "address": self.list_address, "description": self.description},
                     "counters": counters, "event": self.event}
        subject = _compiled(self.subject).render(variables)
        body = _compiled(self.body).render(variables)
        text = CRLF.join(body.splitlines()) + CRLF
        if text.isascii() and all(len(line) < 990 for line in text.split(CRLF)):
            encoding, payload = "7bit", text.encode()
        else:
            lines = "\n".join(body.splitlines()) + "\n"
            encoding, payload = "quoted-printable", quopri.encodestring(lines.encode("utf-8")).replace(b"\n", b"\r\n")
        head = b"".join((
            _header("From", self.sender), _header("To", address), _header("Subject", subject),
            _header("Date", format_datetime(datetime.fromtimestamp(self.at, timezone.utc))),
            _header("Message-ID", message_id or f"<{uuid.uuid4().hex}@{self.hostname}>"),
            _header("Auto-Submitted", "auto-generated"),
            _header("List-Id", self.list_id), b"MIME-Version: 1.0\r\n",
            b'Content-Type: text/plain; charset="utf-8"\r\n', _header("Content-Transfer-Encoding", encoding)))
        return head + b"\r\n" + payload

    def to_bytes(self) -> bytes:
        return f"{FORMAT}\n{json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)}\n".encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "TemplateMail":
        first, _, rest = data.decode("utf-8").partition("\n")
        if first != FORMAT:
            raise ValueError(f"not a stored template mail (it begins {first[:40]!r})")
        return cls(**json.loads(rest))


def template_mail(lst: ListConfig, event: EventSpec, address: str, counters: dict[str, int], hostname: str,
                  now: float) -> bytes:
    """The event's mail to one subscriber, as delivery renders it."""
    return TemplateMail.of(lst, event, hostname, now).render(address, counters)


@dataclass(frozen=True)
class TemplateCopies:
    """What the delivery scheduler makes each recipient's copy of a stored template mail with: the
    counters of a whole claimed batch are read in one statement, then each copy is rendered."""

    mail: TemplateMail
    batch = True  # the scheduler calls `for_batch` once per claimed batch, not `for_recipient`

    @classmethod
    def load(cls, data: bytes) -> "TemplateCopies":
        mail = TemplateMail.from_bytes(data)
        _compiled(mail.subject), _compiled(mail.body)  # a template that does not compile fails every copy now
        return cls(mail)

    def stand_in(self, address: str) -> bytes:
        """The headers a report about a copy that could not be rendered quotes instead of the copy."""
        return b"".join((_header("From", self.mail.sender), _header("To", address),
                         _header("Subject", f"template mail of event {self.mail.event} (not rendered)"),
                         _header("Auto-Submitted", "auto-generated"), _header("List-Id", self.mail.list_id))) + b"\r\n"

    def for_batch(self, conn: Connection, recipients: list[tuple[int, str]]) -> dict[int, bytes | str]:
        """(delivery id, address) -> that delivery's mail, or why it could not be made (a sandbox
        refusal, an error in the template): a render failure fails only its own delivery."""
        counts = store_events.counters(conn, self.mail.list_name, {a for _, a in recipients},
                                       store_events.events_counted(conn, self.mail.list_name))
        copies: dict[int, bytes | str] = {}
        for delivery_id, address in recipients:
            try:
                copies[delivery_id] = self.mail.render(address, counts.get(address, {}))
            except Exception as exc:  # noqa: BLE001 - the template is the operator's; say what it did
                log.error("event.render_failed list=%s event=%s rcpt=%s error=%s: %s", self.mail.list_name,
                          self.mail.event, address, type(exc).__name__, exc)
                copies[delivery_id] = f"{type(exc).__name__}: {exc}"
        return copies


def fire(conn, lst: ListConfig, event: EventSpec | None, name: str, chosen, snapshot: Snapshot,
         now: float) -> Fired:
    """Fire `name` for the chosen subscribers (a statement selecting them, or a list of addresses):
    count and log each fire, and queue the event's template mail to each of them."""
    count = store_events.choose(conn, chosen)
    if count:
        store_events.record_chosen(conn, lst.name, name, now)
        if event is not None and event.template is not None:
            mail = TemplateMail.of(lst, event, snapshot.hostname(lst.domain), now)
            store_queue.queue_template(conn, lst.name, f"event {name}", mail.to_bytes(), lst.address_for("bounces"),
                                       store_events.chosen_addresses(), snapshot.generation, now)
    return Fired(lst.name, name, count)


def tick(store: Store, snapshot: Snapshot, now: float,
         progress: Callable[[int, int], None] | None = None) -> list[Fired]:
    """Fire every event that is due, list by list. `progress(checked, total)` hears, after each event,
    how many (subscriber, event) pairs were evaluated so far, for a progress bar over a big tick."""
    fired: list[Fired] = []
    lists = sorted(snapshot.lists.values(), key=lambda item: item.name)
    with store.writing() as conn:
        sizes = {lst.name: store_events.receiving_count(conn, lst.name) if progress and lst.spec.events else 0
                 for lst in lists}
        total, checked = sum(sizes[lst.name] * len(lst.spec.events) for lst in lists), 0
        for lst in lists:
            for event in in_dependency_order(lst.spec.events):
                done = fire(conn, lst, event, event.name, store_events.eligible(lst.name, event, now), snapshot, now)
                if done.count:
                    fired.append(done)
                    notify.on_commit(conn, "event.fired", list=lst.name, event=done.event, subscribers=done.count,
                                     source="tick")
                if progress:
                    checked += sizes[lst.name]
                    progress(checked, total)
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
    with store.writing() as conn:
        if addresses is None:  # --all: every subscriber who receives the list, chosen in SQL
            fired = fire(conn, lst, event, event_name, store_events.receiving(list_name), snapshot, now)
            if fired.count:
                notify.on_commit(conn, "event.fired", list=list_name, event=event_name, subscribers=fired.count,
                                 source="cli")
            return fired
        chosen = sorted({a.lower() for a in addresses})
        unknown = sorted(set(chosen) - set(store_events.receiving_among(conn, list_name, chosen)))
        if unknown:
            raise LookupError(f"not subscribed to {list_name}: {', '.join(unknown)}")
        fired = fire(conn, lst, event, event_name, chosen, snapshot, now)
        for address in chosen:  # one event each, as a command by mail announces
            notify.on_commit(conn, "event.fired", list=list_name, event=event_name, subscribers=1, source="cli",
                             address=address)
        return fired
