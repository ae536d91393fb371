"""How far a post's delivery has got, and following it until it is over (`listkeeper queue wait`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from listkeeper.store import Store, tracking

FINAL = ("delivered", "failed", "suppressed")  # see lifecycle.py: nothing follows these


@dataclass(frozen=True)
class PostProgress:
    post_id: int
    by_state: Mapping[str, int] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def done(self) -> int:
        return sum(self.by_state.get(state, 0) for state in FINAL)

    @property
    def over(self) -> bool:
        """Every delivery is delivered, failed or suppressed. A post with no deliveries yet (held for
        moderation, say) is not over."""
        return self.total > 0 and self.done == self.total

    @property
    def exit_code(self) -> int:
        """0: all delivered (suppressed ones are not failures), 1: some failed, 2: not over in time."""
        if not self.over:
            return 2
        return 1 if self.by_state.get("failed") else 0


def read(store: Store, post_id: int) -> PostProgress:
    with store.engine.connect() as conn:
        return PostProgress(post_id, tracking.states(conn, post_id))


def follow(store: Store, post_id: int, timeout: float, *, interval: float = 0.25,
           on_update: Callable[[PostProgress], None] = lambda _: None,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> PostProgress:
    """Read the post's progress every `interval` seconds until it is over or `timeout` has passed."""
    deadline = clock() + timeout
    while True:
        now = read(store, post_id)
        on_update(now)
        if now.over:
            return now
        left = deadline - clock()
        if left <= 0:
            return PostProgress(post_id, now.by_state, timed_out=True)
        sleep(min(interval, left))
