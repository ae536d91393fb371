"""System events: built against the catalogue, emitted from any thread, drained by the engine.

`emit` never blocks and never raises: it validates the event, appends it to each attached inbox
(a deque, bounded) and wakes the inbox's loop at most once per drain. An event no rule listens to,
or emitted with no engine attached, is not even built (no command run by hand emits). `on_commit`
holds an event until the caller's database transaction commits, and drops it when the transaction
rolls back, so nothing is announced that did not happen. With no engine attached (a command run by
hand) it writes the event into the store's outbox in that same transaction instead, and the leading
engine drains it into its own inboxes (notify/outbox.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection

from listkeeper.manifests.notifications import EVENT_TYPES
from listkeeper.store import outbox as store_outbox

log = logging.getLogger("listkeeper.notify")
INBOX_LIMIT = 20_000  # events waiting for the drainer; more are dropped and counted


class InvalidEvent(ValueError):
    """An event that does not match the catalogue: a bug in the code that emits it."""


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SystemEvent:
    type: str
    at: float
    attributes: Mapping[str, Any]
    id: str

    def as_json(self) -> dict:
        return {"id": self.id, "type": self.type, "at": iso(self.at),
                "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attributes.items()}}


def make_event(type_: str, attributes: Mapping[str, Any], at: float) -> SystemEvent:
    schema = EVENT_TYPES.get(type_)
    if schema is None:
        raise InvalidEvent(f"unknown event type {type_!r}")
    unknown = sorted(set(attributes) - set(schema))
    if unknown:
        raise InvalidEvent(f"{type_} has no attribute {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, (kind, required) in schema.items():
        value = attributes.get(name)
        if value is None:
            if required:
                raise InvalidEvent(f"{type_} needs the attribute {name!r}")
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif kind is tuple and isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidEvent(f"{type_}.{name} must be {kind.__name__}, not {type(value).__name__}")
        values[name] = value
    return SystemEvent(type_, float(at), MappingProxyType(values), uuid.uuid4().hex)


class Inbox:
    """One engine's events: offered from any thread, taken in batches on the engine's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float], limit: int = INBOX_LIMIT):
        self.clock = clock
        self.wanted: frozenset[str] | None = None  # event types some rule listens to; None: all
        self.dropped = 0
        self._loop = loop
        self._limit = limit
        self._items: deque[SystemEvent] = deque()
        self._ready = asyncio.Event()
        self._signalled = False

    def wants(self, type_: str) -> bool:
        wanted = self.wanted
        return wanted is None or type_ in wanted

    def offer(self, event: SystemEvent) -> None:
        if not self.wants(event.type):
            return
        if len(self._items) >= self._limit:
            self.dropped += 1
            return
        self._items.append(event)
        if not self._signalled:  # one wake-up per drain, not one per event
            self._signalled = True
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: the engine stopped
                pass

    async def take(self, timeout: float | None = None) -> list[SystemEvent]:
        """Every waiting event, oldest first; [] after `timeout` seconds without any."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it may swallow a cancellation
                await self._ready.wait()
        except TimeoutError:
            pass
        self._ready.clear()
        self._signalled = False  # before draining: an event appended from now on wakes us again
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items


_inboxes: tuple[Inbox, ...] = ()  # replaced whole, so emitters in other threads never see it half-changed
_attach_lock = threading.Lock()


def attach(inbox: Inbox) -> None:
    global _inboxes
    with _attach_lock:
        _inboxes = _inboxes + (inbox,)


def detach(inbox: Inbox) -> None:
    global _inboxes
    with _attach_lock:
        _inboxes = tuple(i for i in _inboxes if i is not inbox)


def _now(inboxes: tuple[Inbox, ...]) -> float:
    return inboxes[0].clock() if inboxes else time.time()


def emit(type_: str, /, *, at: float | None = None, **attributes: Any) -> SystemEvent | None:
    """Announce a system event. Never blocks, never raises: a bad event is logged and dropped."""
    try:
        inboxes = _inboxes
        if not any(inbox.wants(type_) for inbox in inboxes):
            return None  # no rule listens: not even built (a dead destination defers thousands at once)
        event = make_event(type_, attributes, _now(inboxes) if at is None else at)
        for inbox in inboxes:
            inbox.offer(event)
        return event
    except Exception:  # noqa: BLE001 - the path that emits must never break
        log.exception("system event %s not emitted", type_)
        return None


_pending: "weakref.WeakKeyDictionary[Connection, list[SystemEvent]]" = weakref.WeakKeyDictionary()
_pending_lock = threading.Lock()


def on_commit(conn: Connection, type_: str, /, **attributes: Any) -> None:
    """Announce the event when `conn`'s transaction commits; forget it if it rolls back. With no inbox
    attached, write it to the outbox in `conn`'s transaction: an event that does not match the catalogue
    is logged and dropped, but a failing write fails the transaction, so no committed event is lost."""
    inboxes = _inboxes
    if not inboxes:
        _to_outbox(conn, type_, attributes)
        return
    try:
        if not any(inbox.wants(type_) for inbox in inboxes):
            return
        event = make_event(type_, attributes, _now(inboxes))
        with _pending_lock:
            held = _pending.get(conn)
            if held is None:
                held = _pending[conn] = []
                sa_event.listen(conn, "commit", _committed)
                sa_event.listen(conn, "rollback", _rolled_back)
            held.append(event)
    except Exception:  # noqa: BLE001
        log.exception("system event %s not emitted", type_)


def _to_outbox(conn: Connection, type_: str, attributes: Mapping[str, Any]) -> None:
    try:
        event = make_event(type_, attributes, time.time())
    except Exception:  # noqa: BLE001 - a bug in the code that emits; the transaction goes on
        log.exception("system event %s not emitted", type_)
        return
    store_outbox.add(conn, event.id, event.type, event.as_json()["attributes"], event.at)


def offer(event: SystemEvent) -> None:
    """Give an event built elsewhere (the outbox's) to every attached inbox, as emitted here."""
    for inbox in _inboxes:
        inbox.offer(event)


def _take_pending(conn: Connection) -> list[SystemEvent]:
    with _pending_lock:
        return _pending.pop(conn, [])


def _committed(conn: Connection) -> None:
    inboxes = _inboxes
    for event in _take_pending(conn):
        for inbox in inboxes:
            inbox.offer(event)


def _rolled_back(conn: Connection) -> None:
    dropped = _take_pending(conn)
    if dropped:
        log.debug("%d system event(s) dropped with a rolled-back transaction", len(dropped))
