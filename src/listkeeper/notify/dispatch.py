"""The engine's notification runner: drains the event inbox, matches the Notification rules of the
current snapshot, and runs their actions as tasks of their own.

Nothing here waits on an action: a web hook that never answers holds only its own task (and at most
ACTION_SLOTS of them per action), never the inbox, the other actions or the path that emitted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from listkeeper.logs import note
from listkeeper.manifests.notifications import EmailAction, LogAction, NotificationSpec

from . import bus
from .actions import ActionFailed, Actions, Inject, Notice, shown_url
from .bus import Inbox, SystemEvent
from .conditions import Admitted, Gate, holds
from .windows import FLUSH, SharedGate

log = logging.getLogger("listkeeper.notify")
MAX_RUNNING = 5000  # action runs started and not finished; more are dropped, and logged
ACTION_SLOTS = 4  # concurrent runs of one action (a log file: one, so lines keep their order)
REFRESH = 1.0  # seconds: how soon a new snapshot's rules decide which events are kept
LOOPING = ("delivery.failed", "delivery.final_failed")


def wanted(notifications) -> frozenset[str]:
    return frozenset(t for spec in notifications.values() if spec.enabled for t in spec.on)


def describe(action) -> str:
    kind = action.type
    if kind == "webhook":
        return f"webhook {shown_url(action.url) if isinstance(action.url, str) else '(URL from a secret)'}"
    if kind == "log":
        return f"log {action.path}"
    if kind == "email":
        return f"email to {', '.join(action.to)}"
    return f"provider {action.name}"


class Dispatcher:
    def __init__(self, current: Callable, inject: Inject | None, clock: Callable[[], float], metrics=None,
                 store=None):
        self._current = current  # () -> Snapshot
        self._metrics = metrics  # the engine's Metrics (engine/metrics.py), or None
        self._clock = clock
        self._inbox = Inbox(asyncio.get_running_loop(), clock)
        # max_frequency: in the store, shared by the nodes and kept across restarts; without one, here
        self._shared = SharedGate(store) if store is not None else None
        self._gate = Gate()
        self._flushed = 0.0
        self._actions = Actions(inject, self._mail_parts)
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._dropped_seen = 0
        self._closed = False
        self.done = 0  # action runs finished, successful or not

    def start(self) -> None:
        self._inbox.wanted = wanted(self._current().notifications)
        bus.attach(self._inbox)
        self._task = asyncio.create_task(self._run(), name="notifications")

    async def _run(self) -> None:
        while not self._closed:
            events = await self._inbox.take(REFRESH)
            snapshot = self._current()
            self._inbox.wanted = wanted(snapshot.notifications)
            for event in events:
                try:
                    await self.handle(event, snapshot.notifications)
                except Exception:  # noqa: BLE001 - one bad rule or event must not stop the others
                    log.exception("notification of %s failed", event.type)
            if self._shared is not None and asyncio.get_running_loop().time() - self._flushed >= FLUSH:
                self._flushed = asyncio.get_running_loop().time()
                await self._shared.flush()
            if self._inbox.dropped != self._dropped_seen:
                log.warning("%d system event(s) dropped: the notification inbox was full",
                            self._inbox.dropped - self._dropped_seen)
                self._dropped_seen = self._inbox.dropped

    async def handle(self, event: SystemEvent, notifications) -> None:
        for name, spec in sorted(notifications.items()):
            if not (spec.enabled and event.type in spec.on and holds(spec.conditions, event)):
                continue
            admitted = await self._admit(name, spec, event)
            if admitted is None:
                note(log, "notification.suppressed", level=logging.DEBUG, notification=name, type=event.type,
                     event_id=event.id, text="held back by max_frequency")
                if self._metrics is not None:
                    self._metrics.notification_suppressed(name)
                continue
            notice = Notice(name, event, admitted.count, admitted.since)
            for index, action in enumerate(spec.actions):
                self._start(spec, index, action, notice)

    async def _admit(self, name: str, spec: NotificationSpec, event: SystemEvent) -> Admitted | None:
        if self._shared is not None:
            return await self._shared.admit(name, spec.max_frequency, event)
        return self._gate.admit(name, spec.max_frequency, event)

    def _start(self, spec: NotificationSpec, index: int, action, notice: Notice) -> None:
        event = notice.event
        if isinstance(action, EmailAction) and event.type in LOOPING and not event.attributes.get("sender"):
            log.info("notification %s: no email about %s of a message with a null sender (a report or "
                     "notice, perhaps our own): that could loop", notice.notification, event.type)
            return
        if len(self._running) >= MAX_RUNNING:
            log.warning("notification %s: %s not run: %d actions are still running", notice.notification,
                        describe(action), len(self._running))
            return
        key = (notice.notification, index)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(1 if isinstance(action, LogAction) else ACTION_SLOTS)
        task = asyncio.create_task(self._perform(slot, action, notice))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _perform(self, slot: asyncio.Semaphore, action, notice: Notice) -> None:
        async with slot:
            outcome = None  # stays None when cancelled (the engine stops): neither sent nor failed
            try:
                await self._actions.run(action, notice, self._clock())
                outcome = "sent"
                note(log, "notification.sent", notification=notice.notification, action=action.type,
                     target=describe(action), type=notice.event.type, event_id=notice.event.id, events=notice.count)
            except ActionFailed as exc:
                outcome = "failed"
                log.warning("notification %s: %s failed for %s %s: %s", notice.notification, describe(action),
                            notice.event.type, notice.event.id, exc,
                            extra=_failed(notice, action, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a web hook's error text might quote its URL: left out
                outcome = "failed"
                text = type(exc).__name__ if action.type == "webhook" else f"{type(exc).__name__}: {exc}"
                log.warning("notification %s: %s failed for %s %s: %s", notice.notification, describe(action),
                            notice.event.type, notice.event.id, text, extra=_failed(notice, action, text))
            finally:
                self.done += 1
                if self._metrics is not None and outcome is not None:
                    self._metrics.notification(notice.notification, action.type, outcome)

    def _mail_parts(self) -> tuple[str, str]:
        snapshot = self._current()
        hostname = snapshot.hostname()
        postmaster = next((d.postmaster for d in snapshot.domains.values()), None) or f"postmaster@{hostname}"
        return hostname, postmaster

    @property
    def running(self) -> int:
        return len(self._running)

    async def close(self) -> None:
        self._closed = True
        bus.detach(self._inbox)
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._shared is not None:  # what this node held back still counts for the next run
            await self._shared.flush()
        await self._actions.close()


def _failed(notice: Notice, action, error: str) -> dict:
    """The structured side of a failed action's warning (its text stays as operators know it)."""
    return {"event": "notification.failed", "text": "", "fields": {
        "notification": notice.notification, "action": action.type, "target": describe(action),
        "type": notice.event.type,
        "event_id": notice.event.id, "error": error}}
