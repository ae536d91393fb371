"""The engine's side of the outbox: events committed by commands run by hand (`tick`, `events fire`,
`members enable`, ...) in other processes reach this engine's Notifications.

The leading engine drains it every few seconds, at most LIMIT events a round: each is offered to the
inboxes with its original time and id, and deleted in the transaction that read it. It is offered
before that transaction commits, so a failed commit offers it again at the next round: at least once,
never lost once committed, and twice only when a commit fails after the offer."""

from __future__ import annotations

import dataclasses
import logging

from listkeeper.store import Store
from listkeeper.store import outbox as store_outbox

from . import bus

log = logging.getLogger("listkeeper.notify")
LIMIT = 1000  # events a drain takes: a backlog is worked off round by round, never in one transaction
INTERVAL = 2.0  # seconds between drains


def drain(store: Store, limit: int = LIMIT) -> int:
    """One round; how many events it took (those no rule wants are taken and dropped too). Blocking."""
    with store.writing() as conn:
        rows = store_outbox.take(conn, limit)
        for row in rows:
            try:
                event = bus.make_event(row["type"], row["attributes"], row["at"])
            except bus.InvalidEvent as exc:  # written by another version of listkeeper, perhaps
                log.warning("outbox event %s dropped: %s", row["event_id"], exc)
                continue
            bus.offer(dataclasses.replace(event, id=row["event_id"]))
    return len(rows)
