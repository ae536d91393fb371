"""The housekeeping job that keeps the store from growing without bound: finished deliveries, decided
holds and the messages nothing needs any more go once they are older than the retention period
(`serve --keep-finished`, 30 days by default), a bounded batch a round."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from listkeeper.logs import note
from listkeeper.store import retention as store_retention

from .snapshot import Snapshot

log = logging.getLogger("listkeeper.housekeeping")
KEEP_FINISHED = 30 * 86400.0


@dataclass(frozen=True)
class Forget:
    """The job, keeping what finished within `keep` seconds."""

    keep: float = KEEP_FINISHED
    deliveries: int = store_retention.DELIVERY_BATCH  # at most this many a round
    messages: int = store_retention.MESSAGE_BATCH

    def __call__(self, conn: Connection, snapshot: Snapshot, now: float) -> None:
        before = now - self.keep
        delivered = store_retention.forget_deliveries(conn, before, self.deliveries)
        decided = store_retention.forget_decisions(conn, before)
        removed = store_retention.forget_messages(conn, before, self.messages)
        if delivered or decided or removed:
            note(log, "housekeeping.retention", deliveries=delivered, messages=removed, holds=decided)
