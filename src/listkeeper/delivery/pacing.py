"""A destination's queue of jobs in one delivery run, and the throttle every worker of it waits on."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from .destinations import Destination
from .transports import Result


@dataclass
class DestinationQueue:
    destination: Destination
    jobs: deque = field(default_factory=deque)
    workers: int = 0
    dead: Result | None = None  # the destination could not be reached in this run


class Pace:
    """Throttle: after every N messages, everyone pauses for T."""

    def __init__(self, throttle):
        self._throttle = throttle
        self._sent = 0
        self._resume_at = 0.0

    async def ready(self) -> None:
        if self._throttle is None:
            return
        loop = asyncio.get_running_loop()
        while (delay := self._resume_at - loop.time()) > 0:
            await asyncio.sleep(delay)
        self._sent += 1
        if self._sent % self._throttle.messages == 0:
            self._resume_at = loop.time() + self._throttle.pause
