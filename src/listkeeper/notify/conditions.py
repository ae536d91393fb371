"""Whether a Notification's conditions hold for an event, and its max_frequency gate. Pure: time is the
event's own, so an injected clock decides everything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from functools import lru_cache
from zoneinfo import ZoneInfo

from listkeeper.manifests.notifications import CONDITION_FIELDS, DAYS, Conditions, MaxFrequency

from .bus import SystemEvent

GLOBS = ("server", "address", "sender")
PRUNE_EVERY = 1000  # admissions between sweeps of finished windows


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def holds(conditions: Conditions, event: SystemEvent) -> bool:
    """All given conditions hold: time of day and day of week (local to the conditions' time zone), and
    every attribute condition (a list means any of its values; globs ignore case)."""
    if conditions.time is not None or conditions.days is not None:
        local = datetime.fromtimestamp(event.at, _zone(conditions.timezone))
        if conditions.time is not None and not conditions.time.contains(local.time()):
            return False
        if conditions.days is not None and DAYS[local.weekday()] not in conditions.days:
            return False
    for attribute, field in CONDITION_FIELDS.items():
        wanted = getattr(conditions, field)
        if wanted is None:
            continue
        value = event.attributes.get(attribute)
        if value is None or not _matches(attribute, wanted, value):
            return False
    return True


def _matches(attribute: str, wanted, value) -> bool:
    if attribute in GLOBS:
        value = str(value).lower()
        return any(fnmatchcase(value, pattern.lower()) for pattern in wanted)
    if attribute == "auth":
        return value is wanted
    if attribute == "tls":
        return value in {getattr(t, "value", t) for t in wanted}
    return value in wanted


@dataclass(frozen=True)
class Admitted:
    """The actions run: for `count` events (this one and those the window held back) since `since`."""

    count: int = 1
    since: float | None = None  # when the actions last ran for this rule (and key); None: never here


@dataclass
class _Window:
    opened_at: float
    every: float
    held_back: int = 0


class Gate:
    """max_frequency: at most one run per window and key (the rule, plus the `per` attributes' values);
    events inside the window run nothing and are counted, and the next run carries the count.

    Kept in memory, for one process: a restart opens every window again. An engine with a store uses
    windows.SharedGate: the same rule, kept in the store for every node."""

    def __init__(self) -> None:
        self._windows: dict[tuple, _Window] = {}
        self._admitted = 0

    def admit(self, rule: str, limit: MaxFrequency | None, event: SystemEvent) -> Admitted | None:
        if limit is None:
            return Admitted()
        key = (rule, limit.every, *(str(event.attributes.get(name)) for name in limit.per))
        window = self._windows.get(key)
        if window is not None and event.at - window.opened_at < limit.every:
            window.held_back += 1
            return None
        self._windows[key] = _Window(event.at, limit.every)
        self._admitted += 1
        if self._admitted % PRUNE_EVERY == 0:
            self._prune(event.at)
        if window is None:
            return Admitted()
        return Admitted(1 + window.held_back, window.opened_at)

    def held_back(self, rule: str) -> int:
        """Events of `rule` waiting, counted, for its next run."""
        return sum(w.held_back for key, w in self._windows.items() if key[0] == rule)

    def _prune(self, now: float) -> None:
        """A closed window that held nothing back changes nothing for the next event: forget it."""
        self._windows = {k: w for k, w in self._windows.items() if w.held_back or now - w.opened_at < w.every}
