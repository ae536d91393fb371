"""This node's leases on the deliveries it claimed (`deliveries.claimed_by`, `lease_until`).

A claim is a lease: renewed while the node runs, so only a node that stopped (or lost the store) loses
its work, and released once it runs out, so another node (or this one, started again) sends that work.
Claiming itself is the scheduler's: a lease begins with the claim. On PostgreSQL lease times are the
server's clock, not this node's (store/leases.py `lease_clock`): nodes whose clocks disagree still agree
on which leases ran out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from listkeeper.store import Store
from listkeeper.store import leases as store_leases

log = logging.getLogger("listkeeper.delivery")


class Leases:
    # False when another live node already runs under this node's name: its leases are not this one's
    release_own = True

    def __init__(self, store: Store, clock: Callable[[], float], duration: float, node: str | None = None):
        self._store = store
        self._clock = clock
        self.duration = duration
        # the engine node the deliveries are claimed for (deliveries.claimed_by); None: the only node
        self.node = node

    def release_at_start(self) -> None:
        """What this node was sending when it stopped is due again, and so is every expired lease.
        Other live nodes' leases stay theirs. Without a node name, or on SQLite (one node only), this
        is the only node: every lease is released, whatever name it was claimed under."""
        with self._store.engine.begin() as conn:
            if self.node is None or conn.dialect.name != "postgresql":
                store_leases.release_all(conn, self._clock())
                return
            if self.release_own:
                store_leases.release_own(conn, self.node, self._clock())
            store_leases.release_expired(conn, self._clock())

    def release_expired(self) -> None:
        with self._store.engine.begin() as conn:
            store_leases.release_expired(conn, self._clock())

    def give_back(self) -> int:
        """At a stop: what this node claimed and did not send is due again at once; how many."""
        with self._store.engine.begin() as conn:
            if self.node is None or conn.dialect.name != "postgresql":
                return store_leases.release_all(conn, self._clock())  # the only node
            return store_leases.release_own(conn, self.node, self._clock()) if self.release_own else 0

    async def keep(self) -> None:
        """Renew this node's leases every third of a lease: only a node that stopped (or lost the store)
        loses them, and another node takes its work once they expire."""
        while self.node is not None:
            await asyncio.sleep(self.duration / 3)
            try:
                await asyncio.to_thread(self._renew)
            except Exception:  # noqa: BLE001 - a store hiccup; the next renewal comes before the expiry
                log.warning("renewing the delivery leases of node %s failed", self.node, exc_info=True)

    def _renew(self) -> None:
        with self._store.engine.begin() as conn:
            store_leases.renew_leases(conn, self.node, self._clock(), lease=self.duration)
