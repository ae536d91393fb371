"""A delivery's life as one transition table; the scheduler only asks it what comes next."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    queued = "queued"
    sending = "sending"
    delivered = "delivered"
    deferred = "deferred"
    failed = "failed"
    suppressed = "suppressed"  # on a suppression list: never sent, and not a failure


class Event(str, Enum):
    claim = "claim"
    delivered = "delivered"
    temporary = "temporary"  # 4xx, connection trouble: try again later
    permanent = "permanent"  # 5xx: give up now
    expired = "expired"  # a temporary failure past the message's lifetime
    lease_lost = "lease_lost"  # the node holding its lease died
    suppressed = "suppressed"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.queued, Event.claim): State.sending,
    (State.deferred, Event.claim): State.sending,
    (State.sending, Event.delivered): State.delivered,
    (State.sending, Event.temporary): State.deferred,
    (State.sending, Event.permanent): State.failed,
    (State.sending, Event.expired): State.failed,
    (State.sending, Event.lease_lost): State.deferred,
    (State.sending, Event.suppressed): State.suppressed,
}


class IllegalTransition(ValueError):
    pass


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} is not possible in state {state.value}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """Postfix's defaults: first retry after 5 minutes, doubling up to about 67, for 5 days."""

    first: float = 300.0
    factor: float = 2.0
    ceiling: float = 4000.0
    lifetime: float = 5 * 24 * 3600.0  # then a temporary failure becomes final

    def next_attempt(self, attempts: int, created_at: float, now: float) -> float | None:
        """When to try again after `attempts` failed tries, or None when the lifetime is over."""
        delay = min(self.first * self.factor ** max(attempts - 1, 0), self.ceiling)
        when = now + delay
        return None if when - created_at > self.lifetime else when
