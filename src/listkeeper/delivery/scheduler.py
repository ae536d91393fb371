"""The scheduler: it alone decides when and how much goes to each destination (after Postfix's qmgr).

Transports only deliver and report a Result. The scheduler claims due deliveries from the store in
bounded batches (so no per-recipient object lives for a whole fan-out), queues them per destination,
runs at most `per_destination` connections per destination and `max_connections` in all, sends
several messages per connection, paces sending (throttle, per-run limit, smart-host delay), and
records outcomes in batches with retry times from the lifecycle table. Its claims are leases
(leases.py); a graceful stop drains it (drain.py). What each copy is made from is copies.py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from listkeeper import notify
from listkeeper.logs import note
from listkeeper.manifests.routes import PickupRoute
from listkeeper.store import Store
from listkeeper.store import queue as store_queue
from listkeeper.store import suppressions as store_suppressions
from listkeeper.store.queue import Due, Outcome

from . import backup, downgrade, drain, dsn, verp
from .copies import Makers, NotYet, Personalise, Templates, Unrenderable  # noqa: F401 - importable here
from .destinations import Destination, destination_for, is_suppressed
from .leases import Leases
from .pacing import DestinationQueue, Pace
from .lifecycle import Event, RetryPolicy, State, next_state
from .mx import connect_mx
from .resolver import MxResolver
from .signing import Signing
from .transports import Job, Result, SmtpConnection, connect_relay, deliver_pickup

log = logging.getLogger("listkeeper.delivery")

BATCH = 500  # deliveries claimed at once
HIGH_WATER = 2000  # claimed but not yet sent; claiming waits below this
FLUSH_EVERY = 500  # outcomes written per transaction ...
FLUSH_AFTER = 0.2  # ... or after this many seconds, so little is sent again after a crash
PICKUP_CHUNK = 200

Inject = Callable[[bytes, str, list[str]], Awaitable[None]]


class Scheduler:
    metrics = None  # the engine's Metrics (engine/metrics.py), set after construction; None: not counted

    def __init__(self, store: Store, current, *, inject: Inject | None = None,
                 clock: Callable[[], float] | None = None, lease: float = 300.0,
                 personalise: Personalise | None = None, templates: Templates | None = None,
                 node: str | None = None):
        self._store = store
        self._current = current  # () -> Snapshot
        self._inject = inject
        self._clock = clock or store.now
        self.leases = Leases(store, self._clock, lease, node)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._stopped = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._failures: list[tuple[Due, Result]] = []
        self._backups: list[tuple[Due, bytes]] = []
        self._bodies: dict[int, bytes] = {}
        self._personal: dict[int, object] = {}  # message id -> its per-recipient maker, for some bodies
        self._makers = Makers(store, current, personalise, templates)
        # delivery id -> its rendered copy, why there is none (a failure), or why not yet (a retry)
        self._copies: dict[int, bytes | str | NotYet] = {}
        self._refs: dict[int, int] = {}
        self._in_queue = 0
        self._flushed_at = 0.0
        self._resolvers: dict[object, MxResolver] = {}
        self._signing = Signing()  # DKIM keys of the current configuration, parsed once
        self.delivered = 0
        self._stopping = False  # drain(): claim nothing more, start no new send

    @property
    def node(self) -> str | None:
        """The engine node this scheduler claims for (deliveries.claimed_by); None: the only node."""
        return self.leases.node

    @node.setter
    def node(self, node: str | None) -> None:
        self.leases.node = node

    @property
    def release_own(self) -> bool:
        """False when another live node already runs under this node's name: its leases are not this one's."""
        return self.leases.release_own

    @release_own.setter
    def release_own(self, value: bool) -> None:
        self.leases.release_own = value

    def wake(self) -> None:
        """Thread-safe: new work was committed."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        released = False  # this node's leases of before its start, released once the store allows
        while not self._stopping:
            self._wake.clear()
            snapshot = self._current()
            settings = snapshot.delivery
            try:
                if not released:
                    await asyncio.to_thread(self.leases.release_at_start)
                    released = True
                done = await self.run_once(snapshot)
            except Exception:  # never let one bad run stop delivery; leases bring the work back
                log.exception("delivery run failed; trying again in %s s", settings.run_interval)
                await self._pause(settings.run_interval)
                continue
            if settings.run_limit and done >= settings.run_limit:
                await self._pause(settings.run_interval)  # the rest waits for the next run
                continue
            if done:
                continue
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel and hang the stop
                async with asyncio.timeout(settings.run_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _pause(self, seconds: float) -> None:
        """The wait between runs that new work does not shorten; a stop ends it."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopped.wait()
        except TimeoutError:
            pass

    async def drain(self, task: asyncio.Task, bound: float) -> None:
        """A graceful stop of `task` (this scheduler's run()), at most `bound` seconds of sending: drain.py."""
        await drain.stop(task, bound, halt=self._halt, flush=lambda: self._flush(self._current()),
                         give_back=self.leases.give_back)

    def _halt(self) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        self._room.set()

    async def keep_leases(self) -> None:
        """The engine's task that renews this node's leases (Leases.keep)."""
        await self.leases.keep()

    async def run_once(self, snapshot) -> int:
        settings = snapshot.delivery
        await asyncio.to_thread(self.leases.release_expired)
        limit = settings.run_limit or float("inf")
        runtime_suppressed = await asyncio.to_thread(self._suppressed)
        suppressed = snapshot.suppressed_addresses | runtime_suppressed
        queues: dict[str, DestinationQueue] = {}
        tasks: list[asyncio.Task] = []
        connections = asyncio.Semaphore(settings.max_connections)
        pace = Pace(settings.throttle)
        claimed_total = 0
        while claimed_total < limit and not self._stopping:
            while self._in_queue >= HIGH_WATER and not self._stopping:
                self._room.clear()
                await self._room.wait()
            if self._stopping:
                break
            claimed = await self._claim(int(min(BATCH, limit - claimed_total)))
            if not claimed:
                break
            claimed_total += len(claimed)
            for due in claimed:
                copy = self._copies.get(due.delivery_id)
                if isinstance(copy, (str, NotYet)):
                    self._record(due, Result(Event.temporary, f"{copy.what}: {copy.reason}")
                                 if isinstance(copy, NotYet) else
                                 Result(Event.permanent, f"the template mail could not be rendered: {copy}"),
                                 "template", snapshot)
                    continue
                if is_suppressed(due.recipient, suppressed, snapshot.suppressed_domains):
                    self._record(due, Result(Event.suppressed, "on a suppression list"), "suppressed", snapshot)
                    continue
                dest = destination_for(due.recipient, snapshot.routes)
                queue = queues.get(dest.key)
                if queue is None:
                    queue = queues[dest.key] = DestinationQueue(dest)
                queue.jobs.append(due)
                self._in_queue += 1
                limit_here = 1 if dest.kind in ("pickup", "discard", "none") else settings.per_destination
                while queue.workers < min(limit_here, len(queue.jobs)):
                    queue.workers += 1
                    tasks.append(asyncio.create_task(self._work(queue, snapshot, connections, pace)))
            await self._flush_if_full(snapshot)
        if tasks:
            for failure in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(failure, Exception):
                    log.error("delivery worker failed: %r", failure, exc_info=failure)
        for queue in queues.values():  # what a failed worker left behind is deferred, not forgotten
            if self._stopping:  # not started before the stop: given back untouched by drain()
                while queue.jobs:
                    self._take(queue)
                continue
            while queue.jobs:
                self._record(self._take(queue), Result(Event.temporary, "delivery worker failed; will retry"),
                             queue.destination.key, snapshot)
        await self._flush(snapshot)
        return claimed_total

    def _suppressed(self) -> frozenset[str]:
        with self._store.engine.connect() as conn:
            return store_suppressions.addresses(conn)

    async def _claim(self, limit: int) -> list[Due]:
        known = frozenset(self._bodies)
        due, (bodies, personal) = await asyncio.to_thread(self._claim_in_store, limit, known)
        self._bodies.update(bodies)  # bookkeeping stays on the loop's thread
        self._personal.update(personal)
        for d in due:  # counted before any other wait, so no worker can release these bodies
            self._refs[d.message_id] = self._refs.get(d.message_id, 0) + 1
        gone = {d.message_id for d in due} - set(self._bodies)  # released while we were claiming
        if gone:
            try:
                bodies, personal = await asyncio.to_thread(self._makers.fetch, gone)
            except Exception as exc:  # noqa: BLE001 - claimed: recorded as retried, never left 'sending'
                log.exception("reading %d claimed message(s) again failed; their deliveries are retried", len(gone))
                later = NotYet(f"{type(exc).__name__}: {exc}", "the message could not be read")
                self._copies.update({d.delivery_id: later for d in due if d.message_id in gone})
            else:
                self._bodies.update(bodies)
                self._personal.update(personal)
        templated = {mid for mid in {d.message_id for d in due} if getattr(self._personal.get(mid), "batch", False)}
        batches: dict[int, list[tuple[int, str]]] = {}
        for d in due if templated else ():
            if d.message_id in templated:
                batches.setdefault(d.message_id, []).append((d.delivery_id, d.recipient))
        if batches:
            self._copies.update(await asyncio.to_thread(
                self._makers.render, [(self._personal[mid], recipients) for mid, recipients in batches.items()]))
        return due

    def _claim_in_store(self, limit: int, known: frozenset[int]):
        with self._store.engine.begin() as conn:
            due = verp.signed(conn, store_queue.claim_due(conn, self._clock(), limit, self.leases.duration, self.node))
            return due, self._makers.load(conn, {d.message_id for d in due} - known)

    def _data(self, due: Due, seven_bit: bool = False) -> bytes:
        """The copy as it leaves: a rendered template copy or the post with its per-recipient headers, seven
        bits for a server without 8BITMIME, then (the last change) its DKIM signature."""
        data = self._copies.get(due.delivery_id)
        if data is None:
            maker = self._personal.get(due.message_id)
            if maker is None:
                data = self._bodies[due.message_id]
            else:
                for_recipient = getattr(maker, "for_recipient", None)
                if for_recipient is None:  # never its stored form: a template mail is rendered or fails
                    raise RuntimeError(f"delivery {due.delivery_id} of template message {due.message_id} "
                                       f"was not rendered")
                data = for_recipient(due.recipient)
        if seven_bit:
            try:
                data = downgrade.seven_bit(data)
            except Exception:  # noqa: BLE001 - the transport then refuses it (5.6.3): reported, never lost
                log.exception("message %d could not be converted to seven bits", due.message_id)
        return self._signing.sign(data, due.return_path, self._current(), self._clock())

    def _job(self, due: Due, seven_bit: bool = False) -> Job:
        return Job(due.delivery_id, due.recipient, due.return_path, self._data(due, seven_bit))

    def _take(self, queue: DestinationQueue) -> Due:
        due = queue.jobs.popleft()
        self._in_queue -= 1
        if self._in_queue < HIGH_WATER // 2:
            self._room.set()
        return due

    async def _work(self, queue: DestinationQueue, snapshot, connections: asyncio.Semaphore, pace: Pace) -> None:
        try:
            kind = queue.destination.kind
            if kind == "pickup":
                await self._work_pickup(queue, snapshot)
            elif kind in ("discard", "none"):
                result = (Result(Event.delivered, "discarded by route") if kind == "discard"
                          else Result(Event.permanent, "550 5.4.4 no route matches this recipient"))
                while queue.jobs:
                    self._record(self._take(queue), result, kind, snapshot)
            else:
                async with connections:
                    await self._work_smtp(queue, snapshot, pace)
        except Exception:
            if queue.workers == 1:  # the last worker here: defer the rest now, so claiming never waits on it
                while queue.jobs:
                    self._record(self._take(queue), Result(Event.temporary, "delivery worker failed; will retry"),
                                 queue.destination.key, snapshot)
            raise
        finally:
            queue.workers -= 1

    async def _work_pickup(self, queue: DestinationQueue, snapshot) -> None:
        route = PickupRoute(match="*", transport="pickup", folder=queue.destination.folder)
        while queue.jobs and not self._stopping:
            chunk = [self._take(queue) for _ in range(min(PICKUP_CHUNK, len(queue.jobs)))]
            results = await deliver_pickup(route, [self._job(d) for d in chunk])
            for due, result in zip(chunk, results):
                self._record(due, result, "pickup", snapshot)
            await self._flush_if_full(snapshot)

    async def _work_smtp(self, queue: DestinationQueue, snapshot, pace: Pace) -> None:
        settings = snapshot.delivery
        dest = queue.destination
        while queue.jobs and not self._stopping:
            if queue.dead is not None:
                self._record(self._take(queue), queue.dead, dest.key, snapshot)
                continue
            conn = await self._connect(dest, snapshot)
            if isinstance(conn, Result):
                queue.dead = conn  # every job still queued here shares the outcome
                continue
            try:
                sent = 0
                while (queue.jobs and sent < settings.messages_per_connection and not conn.broken
                       and not self._stopping):
                    due = self._take(queue)
                    await pace.ready()
                    try:
                        result = await conn.send(self._job(due, seven_bit=not conn.eight_bit))
                    except Exception as exc:  # noqa: BLE001 - recorded, never lost
                        conn.broken = True
                        result = Result(Event.temporary, f"{dest.key}: {type(exc).__name__}: {exc}")
                    self._record(due, result, dest.key, snapshot)
                    sent += 1
                    await self._flush_if_full(snapshot)
            finally:
                await conn.close()

    async def _connect(self, dest: Destination, snapshot) -> SmtpConnection | Result:
        helo = snapshot.hostname()
        if dest.kind == "mx":
            return await connect_mx(dest.domain, self._resolver(snapshot), snapshot.delivery.mx_port,
                                    60.0, helo)
        result = Result(Event.temporary, "no relay configured")
        for name in dest.relays:  # the relay, then its fallbacks in order
            relay = snapshot.relays.get(name)
            if relay is None:
                result = Result(Event.temporary, f"relay {name} is not configured")
                continue
            if snapshot.delivery.smarthost_delay:
                await asyncio.sleep(snapshot.delivery.smarthost_delay)
            opened = await connect_relay(relay, helo)
            if isinstance(opened, SmtpConnection):
                return opened
            result = opened
        return result

    def _resolver(self, snapshot) -> MxResolver:
        """One resolver (and its cache and server statistics) per DNS configuration."""
        settings = snapshot.dns
        key = settings.model_dump_json()
        if key not in self._resolvers:
            self._resolvers[key] = MxResolver([(ns.address, ns.port) for ns in settings.nameservers],
                                              timeout=settings.timeout, avoid_failing_for=settings.avoid_failing_for,
                                              observe=self.metrics.dns if self.metrics is not None else None)
        return self._resolvers[key]

    def _record(self, due: Due, result: Result, transport: str, snapshot) -> None:
        now = self._clock()
        event, retry_at = result.event, None
        if event is Event.temporary:
            r = snapshot.delivery.retry
            policy = RetryPolicy(first=r.first, ceiling=r.maximum, lifetime=r.lifetime)
            retry_at = policy.next_attempt(due.attempts + 1, due.created_at, now)
            if retry_at is None:
                event = Event.expired
        state = next_state(State.sending, event)
        note(log, "delivery.attempt", outcome=state.value, delivery_id=due.delivery_id, queue_id=due.queue_id,
             message_id=due.message_id, recipient=due.recipient, domain=due.recipient.rpartition("@")[2].lower(),
             transport=transport, attempt=due.attempts + 1, retry_at=retry_at, detail=result.detail)
        if self.metrics is not None:
            self.metrics.delivery(state.value, transport)
        if state is State.delivered:
            self.delivered += 1
            if snapshot.delivery.backup is not None:
                self._backups.append((due, self._data(due)))
        if state is State.deferred:
            notify.emit("delivery.failed", address=due.recipient, sender=due.return_path, destination=transport,
                        error=result.detail, attempts=due.attempts + 1, message_id=due.message_id, retry_at=retry_at)
        elif state is State.failed:
            notify.emit("delivery.final_failed", address=due.recipient, sender=due.return_path,
                        destination=transport, error=result.detail, attempts=due.attempts + 1,
                        message_id=due.message_id, reason=event.value)
        if state is State.failed:
            self._failures.append((due, Result(event, result.detail)))  # its copy is kept for the report
        else:
            self._copies.pop(due.delivery_id, None)
            self._release_body(due.message_id)
        self._outcomes.append(Outcome(due.delivery_id, state.value, transport,
                                      None if state is State.delivered else result.detail, retry_at))

    def _release_body(self, message_id: int) -> None:
        left = self._refs.get(message_id, 1) - 1
        if left <= 0:
            self._refs.pop(message_id, None)
            self._bodies.pop(message_id, None)
            self._personal.pop(message_id, None)
        else:
            self._refs[message_id] = left

    async def _flush_if_full(self, snapshot) -> None:
        if len(self._outcomes) >= FLUSH_EVERY or (
                self._outcomes and self._loop.time() - self._flushed_at > FLUSH_AFTER):
            await self._flush(snapshot)

    async def _flush(self, snapshot) -> None:
        self._flushed_at = self._loop.time()
        outcomes, self._outcomes = self._outcomes, []
        failures, self._failures = self._failures, []
        backups, self._backups = self._backups, []
        if outcomes:
            try:
                await asyncio.to_thread(self._write, outcomes)
            except Exception:
                self._outcomes = outcomes + self._outcomes  # written with the next flush
                self._failures = failures + self._failures
                self._backups = backups + self._backups
                raise
        if backups:
            try:
                await asyncio.to_thread(backup.write_copies, self._store, self._clock(), backups,
                                        snapshot.delivery.backup)
            except Exception:  # noqa: BLE001 - the store failed before any was written: all go with the next flush
                log.exception("writing %d backup copies failed; tried again with the next outcomes", len(backups))
                self._backups = backups + self._backups
        if failures:
            await self._report(failures, snapshot)

    def _write(self, outcomes: list[Outcome]) -> None:
        with self._store.engine.begin() as conn:
            store_queue.record_outcomes(conn, outcomes, self._clock(), self.node)

    def _original(self, message_id: int, items: list[tuple[Due, Result]]) -> bytes:
        """What a report quotes: the recipient's own copy when it was made one; for a template mail
        that could not be rendered, its stand-in headers; else the message as stored."""
        for due, _ in items:
            copy = self._copies.get(due.delivery_id)
            if isinstance(copy, bytes):
                return copy
        maker = self._personal.get(message_id)
        if getattr(maker, "batch", False):
            stand_in = getattr(maker, "stand_in", None)
            return stand_in(items[0][0].recipient) if stand_in is not None else b""
        return self._bodies.get(message_id, b"")

    async def _report(self, failures: list[tuple[Due, Result]], snapshot) -> None:
        """RFC 3464 reports to each failed message's envelope sender, and a notice to the postmaster."""
        by_message: dict[tuple[int, str], list[tuple[Due, Result]]] = {}
        for due, result in failures:
            by_message.setdefault((due.message_id, due.return_path), []).append((due, result))
        for (message_id, sender), items in by_message.items():
            original = self._original(message_id, items)
            # a template that could not be rendered is the operator's error, not the recipient's: no
            # report to the (VERP) return path, which would count as the subscriber's bounce
            unrendered = any(isinstance(self._copies.get(d.delivery_id), (str, NotYet)) for d, _ in items)
            for due, _ in items:
                self._copies.pop(due.delivery_id, None)
                self._release_body(due.message_id)
            if self._inject is None:
                continue
            found = [dsn.Failure(d.recipient, r.detail, expired=r.event is Event.expired) for d, r in items]
            host = snapshot.hostname(sender.rpartition("@")[2] or None)
            now = self._clock()
            try:
                if not unrendered and dsn.should_report(sender, original):
                    report = dsn.delivery_report(original=original, envelope_from=sender, failures=found,
                                                 reporting_host=host, arrival=items[0][0].created_at, now=now)
                    await self._inject(report, "", [sender])
                postmaster = next((d.postmaster for d in snapshot.domains.values()), None)
                if postmaster and sender:  # a failed report or notice gets no notice: no loops
                    notice = dsn.postmaster_notice(original=original, envelope_from=sender, failures=found,
                                                   reporting_host=host, postmaster=postmaster, now=now)
                    await self._inject(notice, "", [postmaster])
            except Exception:  # a report that cannot be made must not stop delivery
                log.exception("delivery report for message %d failed", message_id)
