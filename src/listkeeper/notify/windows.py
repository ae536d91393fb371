"""max_frequency kept in the store: one run per window and key across every engine node on the store,
and across restarts (conditions.Gate is the same rule kept in one process's memory).

The first event of a window asks the store (in a thread: never on the event loop) and learns when the
window that is open began; later events inside it are held back here without a store call, and their
count is written to the store within FLUSH seconds, so the next run, on whichever node, carries it.
Counts held on one node near a window's end may reach the store after another node's run: they are
then carried by the run after that one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

from listkeeper.manifests.notifications import MaxFrequency
from listkeeper.store import Store
from listkeeper.store import notify_windows as store_windows

from .bus import SystemEvent
from .conditions import PRUNE_EVERY, Admitted, _Window

log = logging.getLogger("listkeeper.notify")
FLUSH = 2.0  # seconds between writes of the counts held back here


def window_key(limit: MaxFrequency, event: SystemEvent) -> str:
    values = [[name, str(event.attributes.get(name))] for name in limit.per]
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode("utf-8")).hexdigest()


class SharedGate:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._known: dict[tuple[str, str], _Window] = {}  # held_back: counted here, not yet in the store
        self._claims = 0

    async def admit(self, rule: str, limit: MaxFrequency | None, event: SystemEvent) -> Admitted | None:
        if limit is None:
            return Admitted()
        key = (rule, window_key(limit, event))
        known = self._known.get(key)
        if known is not None and event.at - known.opened_at < limit.every:
            known.held_back += 1
            return None
        held = known.held_back if known is not None else 0
        try:
            claim = await asyncio.to_thread(self._claim, key, event.at, limit.every, held)
        except Exception:  # noqa: BLE001 - the store failing must not silence the rule: decide here alone
            log.warning("notification %s: max_frequency decided by this node alone: the store failed", rule,
                        exc_info=True)
            self._known[key] = _Window(event.at, limit.every)
            return Admitted(1 + held, known.opened_at if known is not None else None)
        self._known[key] = _Window(claim.opened_at, limit.every)
        self._claims += 1
        if self._claims % PRUNE_EVERY == 0:
            self._prune(event.at)
        return Admitted(claim.count, claim.since) if claim.won else None

    def _claim(self, key: tuple[str, str], at: float, every: float, held: int) -> store_windows.Claim:
        with self._store.writing() as conn:
            return store_windows.claim(conn, *key, at, every, held)

    async def flush(self) -> None:
        """The counts held back here, into the store; kept for the next flush if the store fails."""
        held = {key: w.held_back for key, w in self._known.items() if w.held_back}
        if not held:
            return
        for key in held:
            self._known[key].held_back = 0
        try:
            await asyncio.to_thread(self._add_held, held)
        except Exception:  # noqa: BLE001 - counted again at the next flush
            log.warning("max_frequency: counts held back not written to the store; trying again", exc_info=True)
            for key, count in held.items():
                window = self._known.setdefault(key, _Window(0.0, 0.0))
                window.held_back += count

    def _add_held(self, held: dict[tuple[str, str], int]) -> None:
        with self._store.writing() as conn:
            store_windows.add_held(conn, held)

    def _prune(self, now: float) -> None:
        """A closed window with no count waiting is asked about again at its next event: forget it."""
        self._known = {k: w for k, w in self._known.items() if w.held_back or now - w.opened_at < w.every}
