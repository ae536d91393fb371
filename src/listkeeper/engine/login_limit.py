"""Failed SMTP logins counted per client network across connections (as Postfix's anvil and Dovecot's
auth penalty do): past the limit within a sliding window, AUTH from that network is refused unchecked.

Sans-I/O: the caller gives the time. Kept in this process's memory only (each node counts on its own),
and bounded: at most `max_entries` networks are remembered, the one whose last failure is oldest going
first. A password being checked holds a place in its network's count until its verdict (`checking`):
logins sent at once can start no more checks than the failures left, so a flood from one network never
costs more key derivations than the limit allows."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass

from listkeeper.manifests.common import duration_seconds

MAX_ENTRIES = 10_000  # networks remembered; at most `failures` timestamps each


@dataclass(frozen=True)
class FailureLimit:
    """`failures` failed logins within `window` seconds; failures == 0 disables the limit."""

    failures: int
    window: float

    @classmethod
    def parse(cls, text: str) -> "FailureLimit":
        """'10/10m', '3/60s', '5/1h', '0' (off); the window in the manifests' duration form."""
        count, slash, window = text.strip().partition("/")
        try:
            failures = int(count.strip()) if count.strip().isdigit() else -1
            seconds = duration_seconds(window) if slash else 0.0
        except ValueError:
            failures = -1
        if failures < 0 or (not slash and failures != 0):
            raise ValueError(f"{text!r} is not a limit such as 10/10m, 3/60s or 0 (off)")
        if failures and seconds <= 0:
            raise ValueError(f"{text!r}: the window must be longer than 0, as in 10/10m")
        return cls(failures, seconds)

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    def __str__(self) -> str:
        return f"{self.failures}/{self.window:g}s" if self.enabled else "0"


def client_network(peer: str) -> str:
    """What failures are counted by: the address for IPv4, its /64 for IPv6 (one host's usual share)."""
    try:
        ip = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """The times of each network's last `failures` failed logins, newest networks last."""

    def __init__(self, limit: FailureLimit, max_entries: int = MAX_ENTRIES):
        self.limit = limit
        self.max_entries = max_entries
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._checking: dict[str, int] = {}  # passwords of each network being checked now

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, network: str, now: float) -> int:
        times = self._failures.get(network)
        if times is None:
            return 0
        while times and times[0] <= now - self.limit.window:
            times.popleft()
        if not times:
            del self._failures[network]
            return 0
        return len(times)

    def blocked(self, network: str, now: float) -> bool:
        """Whether the failures in the window and the checks under way leave the network no attempt."""
        return (self.limit.enabled
                and self._recent(network, now) + self._checking.get(network, 0) >= self.limit.failures)

    def check(self, network: str, now: float) -> bool:
        """Take a place for one password check (False: blocked); give it back with `checked`."""
        if self.blocked(network, now):
            return False
        self._checking[network] = self._checking.get(network, 0) + 1
        return True

    def checked(self, network: str) -> None:
        left = self._checking.pop(network, 1) - 1
        if left > 0:
            self._checking[network] = left

    def blocked_until(self, network: str, now: float) -> float | None:
        """When the oldest failure leaves the window (checks under way may end sooner)."""
        if not self.blocked(network, now) or network not in self._failures:
            return None
        return self._failures[network][0] + self.limit.window

    def failed(self, network: str, now: float) -> bool:
        """Count one failed login; True when it is the one that blocks the network."""
        if not self.limit.enabled:
            return False
        before = self._recent(network, now)
        times = self._failures.get(network)
        if times is None:
            while len(self._failures) >= self.max_entries:
                self._failures.popitem(last=False)
            times = self._failures[network] = deque(maxlen=self.limit.failures)
        times.append(now)
        self._failures.move_to_end(network)
        return before == self.limit.failures - 1
