"""The queue runner: claims due deliveries, hands each to its route's transport, records outcomes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import dns.asyncresolver

from listkeeper.manifests.routes import DiscardRoute, MxRoute, PickupRoute, RelayRoute
from listkeeper.store import Store
from listkeeper.store import queue as store_queue
from listkeeper.store.queue import Due, Outcome

from .lifecycle import Event, RetryPolicy, State, next_state
from .mx import deliver_mx
from .routing import route_for
from .transports import Job, Result, deliver_discard, deliver_pickup, deliver_relay

log = logging.getLogger("listkeeper.delivery")


class DeliveryRunner:
    def __init__(self, store: Store, current, *, concurrency: int = 20, batch: int = 200,
                 lease: float = 300.0, retry: RetryPolicy = RetryPolicy(), mx_port: int = 25,
                 clock: Callable[[], float] | None = None):
        self._store = store
        self._current = current  # () -> Snapshot
        self._concurrency = asyncio.Semaphore(concurrency)
        self._batch = batch
        self._lease = lease
        self._retry = retry
        self._mx_port = mx_port
        self._clock = clock or store.now
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._resolver = dns.asyncresolver.Resolver(configure=True)
        self.delivered = 0

    def wake(self) -> None:
        """Thread-safe: new work was committed."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        await asyncio.to_thread(self._release_all)
        while True:
            self._wake.clear()
            worked = await self.run_once()
            if not worked:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass

    def _release_all(self) -> None:
        # a single node owns every lease; what was 'sending' when it stopped is due again
        with self._store.engine.begin() as conn:
            store_queue.release_expired(conn, float("inf"))

    async def run_once(self) -> int:
        now = self._clock()
        claimed = await asyncio.to_thread(self._claim, now)
        if not claimed:
            return 0
        due, bodies = claimed
        snapshot = self._current()
        pickups: dict[PickupRoute, list[tuple[Due, Job]]] = {}
        others = []
        for d in due:
            job = Job(d.delivery_id, d.recipient, d.return_path, bodies[d.message_id])
            route = route_for(d.recipient, snapshot.routes)
            if isinstance(route, PickupRoute):
                pickups.setdefault(route, []).append((d, job))
            else:
                others.append((d, job, route))
        results: dict[int, tuple[Result, str]] = {}

        async def pickup(route: PickupRoute, items: list[tuple[Due, Job]]) -> None:
            done = await deliver_pickup(route, [job for _, job in items])
            results.update({d.delivery_id: (r, "pickup") for (d, _), r in zip(items, done)})

        async def one(d: Due, job: Job, route) -> None:
            results[d.delivery_id] = await self._deliver(job, route, snapshot)

        await asyncio.gather(*(pickup(r, items) for r, items in pickups.items()),
                             *(one(d, job, route) for d, job, route in others))
        now = self._clock()
        outcomes = [self._outcome(d, *results[d.delivery_id], now) for d in due]
        await asyncio.to_thread(self._record, outcomes, now)
        return len(due)

    def _claim(self, now: float):
        with self._store.engine.begin() as conn:
            due = store_queue.claim_due(conn, now, self._batch, self._lease)
            if not due:
                return None
            return due, store_queue.message_data(conn, (d.message_id for d in due))

    def _record(self, outcomes: list[Outcome], now: float) -> None:
        with self._store.engine.begin() as conn:
            store_queue.record_outcomes(conn, outcomes, now)

    async def _deliver(self, job: Job, route, snapshot) -> tuple[Result, str]:
        async with self._concurrency:
            if route is None:
                return Result(Event.permanent, "550 5.4.4 no route matches this recipient"), "none"
            if isinstance(route, DiscardRoute):
                return await deliver_discard(job), "discard"
            if isinstance(route, RelayRoute):
                relay = snapshot.relays.get(route.relay)
                if relay is None:
                    return Result(Event.temporary, f"relay {route.relay} is not configured"), "relay"
                return await deliver_relay(relay, job), f"relay:{route.relay}"
            if isinstance(route, MxRoute):
                return await deliver_mx(job, self._resolver, port=self._mx_port), "mx"
        raise AssertionError(f"unknown route {route!r}")

    def _outcome(self, due: Due, result: Result, transport: str, now: float) -> Outcome:
        event = result.event
        retry_at = None
        if event is Event.temporary:
            retry_at = self._retry.next_attempt(due.attempts + 1, due.created_at, now)
            if retry_at is None:
                event = Event.expired
        state = next_state(State.sending, event)
        log.info("delivery.%s delivery=%d message=%d rcpt=%s transport=%s detail=%s", state.value,
                 due.delivery_id, due.message_id, due.recipient, transport, result.detail)
        if state is State.delivered:
            self.delivered += 1
        return Outcome(due.delivery_id, state.value, transport,
                       None if state is State.delivered else result.detail, retry_at)
