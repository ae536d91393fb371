"""What `/metrics` shows: one engine's counters and gauges in the Prometheus text format.

Each Engine owns a registry of its own (never prometheus_client's global one: one process may run
several engines, as the tests do). Labels stay few-valued: list and notification names, reply codes,
outcomes, and the destination as a transport name (`relay:NAME`, `mx`, `pickup`, ...), never an
address or, for direct MX delivery, a recipient domain. The queue's depth and oldest age are read
from the store when scraped (one GROUP BY), so every node of a cluster shows the same queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy import func, select

from listkeeper.notify.bus import SystemEvent
from listkeeper.store import Store
from listkeeper.store.queue import InboundRecord
from listkeeper.store.tables import deliveries

from .fanout import Refused

log = logging.getLogger("listkeeper.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
WAITING = ("queued", "deferred", "sending")  # the delivery states that make up the queue
VERDICT_OF_STATE = {"queued": "accept", "held": "hold", "discarded": "discard"}  # a list post's state


def destination_label(transport: str) -> str:
    """`relay:NAME` stays; `mx:DOMAIN` and `pickup:FOLDER` become `mx` and `pickup` (unbounded values)."""
    kind, _, _ = transport.partition(":")
    return transport if kind == "relay" else kind


class QueueCollector:
    """Queue depth by state and the oldest waiting delivery's age, read at scrape time."""

    def __init__(self, store: Store):
        self._store = store

    def collect(self):
        up = GaugeMetricFamily("listkeeper_store_up", "1 when the store answered this scrape's queue query")
        try:
            with self._store.engine.connect() as conn:
                rows = conn.execute(select(deliveries.c.state, func.count(), func.min(deliveries.c.created_at))
                                    .where(deliveries.c.state.in_(WAITING))
                                    .group_by(deliveries.c.state)).all()
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer, saying the store is down
            log.warning("metrics: the queue query failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("listkeeper_queue_deliveries", "Deliveries waiting or being sent, by state",
                                  labels=["state"])
        found = {state: (count, oldest) for state, count, oldest in rows}
        for state in WAITING:
            depth.add_metric([state], found.get(state, (0, None))[0])
        yield depth
        oldest = [created for _, created in found.values() if created is not None]
        age = GaugeMetricFamily("listkeeper_queue_oldest_age_seconds",
                                "Age of the oldest delivery waiting or being sent (0 when the queue is empty)")
        age.add_metric([], max(0.0, self._store.now() - min(oldest)) if oldest else 0.0)
        yield age


class GenerationCollector:
    """The configuration generation this engine runs, read from its snapshot at scrape time."""

    def __init__(self, current: Callable):
        self._current = current

    def collect(self):
        gauge = GaugeMetricFamily("listkeeper_config_generation", "The configuration generation the engine runs")
        gauge.add_metric([], self._current().generation)
        yield gauge


class Metrics:
    def __init__(self, store: Store, current: Callable):
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.clock = store.now  # the bus stamps events with the first inbox's clock
        self.probes: set[tuple] = set()  # local addresses of /healthz's own SMTP connections (engine/health.py)
        self.smtp_sessions = Counter("listkeeper_smtp_sessions", "SMTP sessions opened", registry=registry)
        self.smtp_active = Gauge("listkeeper_smtp_sessions_active", "SMTP sessions open now", registry=registry)
        self.smtp_replies = Counter("listkeeper_smtp_replies", "SMTP replies sent, by code", ["code"],
                                    registry=registry)
        self.auth_blocked = Counter("listkeeper_auth_blocked", "Client networks blocked from SMTP AUTH for "
                                    "too many failed logins (each time the limit is reached)", registry=registry)
        self.posts = Counter("listkeeper_posts", "Posts to a list, by the posting rules' verdict",
                             ["list", "verdict"], registry=registry)
        self.deliveries = Counter("listkeeper_deliveries", "Delivery attempts, by outcome and destination",
                                  ["outcome", "destination"], registry=registry)
        self.dns_lookups = Counter("listkeeper_dns_lookups", "DNS queries sent (answers from cache not counted)",
                                   ["type", "server"], registry=registry)
        self.dns_failures = Counter("listkeeper_dns_failures", "DNS queries that got no usable answer",
                                    ["type", "server"], registry=registry)
        self.reloads = Counter("listkeeper_reloads", "Configuration reloads from files, by result "
                               "(applied, unchanged, rejected, failed)", ["result"], registry=registry)
        self.event_fires = Counter("listkeeper_event_fires", "List events fired, counted per subscriber",
                                   ["list", "event", "source"], registry=registry)
        self.notifications = Counter("listkeeper_notifications", "Notification actions run, by outcome",
                                     ["notification", "action", "outcome"], registry=registry)
        self.suppressed = Counter("listkeeper_notifications_suppressed",
                                  "Events a notification did not act on because of its max_frequency",
                                  ["notification"], registry=registry)
        registry.register(QueueCollector(store))
        registry.register(GenerationCollector(current))

    # -- what the engine's parts report ---------------------------------------------------------------------

    def smtp_reply(self, code: str) -> None:
        self.smtp_replies.labels(code).inc()

    def verdicts(self, outcome: InboundRecord | Refused) -> None:
        """Posts by the posting rules' verdict, from what fan_out made of a message: a refusal by a
        list, or the list posts (the records kept for digests) in their states."""
        if isinstance(outcome, Refused):
            if outcome.list_name:
                self.posts.labels(outcome.list_name, "reject").inc()
            return
        for post in outcome.posts:
            if post.digest:
                self.posts.labels(post.list_name, VERDICT_OF_STATE.get(post.state, post.state)).inc()

    def delivery(self, outcome: str, transport: str) -> None:
        self.deliveries.labels(outcome, destination_label(transport)).inc()

    def dns(self, server: str, rdtype: str, ok: bool) -> None:
        self.dns_lookups.labels(rdtype, server).inc()
        if not ok:
            self.dns_failures.labels(rdtype, server).inc()

    def reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def notification(self, name: str, action: str, outcome: str) -> None:
        self.notifications.labels(name, action, outcome).inc()

    def notification_suppressed(self, name: str) -> None:
        self.suppressed.labels(name).inc()

    # -- event fires arrive on the system-event bus (from ticks and from mail commands alike) ---------------
    # The bus is the process's: with several engines in one process, each counts every engine's fires.

    def wants(self, type_: str) -> bool:
        return type_ == "event.fired"

    def offer(self, event: SystemEvent) -> None:
        if event.type == "event.fired":
            attributes = event.attributes
            self.event_fires.labels(attributes.get("list", ""), attributes.get("event", ""),
                                    attributes.get("source", "")).inc(attributes.get("subscribers", 1) or 0)

    # -- the endpoint ---------------------------------------------------------------------------------------

    async def exposition(self) -> bytes:
        """The text format; in a thread, since the queue's gauges query the store."""
        return await asyncio.to_thread(generate_latest, self.registry)
