"""Which engine node runs the periodic work (list events, digests, reports, housekeeping): one at a time.

PostgreSQL: the node holding a session-level advisory lock, taken with pg_try_advisory_lock on a
connection of its own and held while it leads. When the node dies its connection closes and the server
releases the lock; another node takes it at its next try (every `interval` seconds). A node cut off
from the server stops leading as soon as its check fails, and the server drops the lock once its TCP
keepalives give up on the node (about `interval` * 4 seconds). SQLite: one node, always leading."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from listkeeper.store import Store
from listkeeper.store.nodes import LEADER_APPLICATION, LEADER_LOCK

log = logging.getLogger("listkeeper.leader")

LOCK_KEY = LEADER_LOCK  # one lock per database, so one leader per store


class Leadership:
    def __init__(self, store: Store, node: str, interval: float = 2.0):
        self.node = node
        self.interval = interval
        self._shared = store.engine.dialect.name == "postgresql"
        self.leading = not self._shared
        self._engine = None
        self._conn: Connection | None = None
        if self._shared:
            seconds = max(1, int(interval))
            # a connection of its own, never returned to a pool: the lock lives exactly as long as it;
            # libpq gives up on an unanswered server after tcp_user_timeout, so a check never hangs
            self._engine = create_engine(store.engine.url, poolclass=NullPool, connect_args=dict(
                application_name=f"{LEADER_APPLICATION}{node}"[:63],  # who leads, in pg_stat_activity
                connect_timeout=max(2, seconds * 2), keepalives=1, keepalives_idle=seconds,
                keepalives_interval=seconds, keepalives_count=3, tcp_user_timeout=seconds * 4000))

    def check(self) -> bool:
        """Become the leader if no node is, or make sure this node still is. Blocking: run in a thread."""
        if not self._shared:
            return True
        was = self.leading
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                seconds = max(1, int(self.interval))  # the server, too, notices a vanished node soon
                for setting in ("tcp_keepalives_idle", "tcp_keepalives_interval"):
                    self._conn.execute(text(f"SET {setting} = {seconds}"))
                self._conn.execute(text("SET tcp_keepalives_count = 3"))
            if self.leading:
                self._conn.execute(text("SELECT 1"))
            else:
                self.leading = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                                       {"key": LOCK_KEY}).scalar())
        except Exception as exc:  # noqa: BLE001 - the store is unreachable: whatever we held is gone
            self.leading = False
            self._drop()
            log.warning("leader check failed (%s: %s); node %s does not run the periodic work",
                        type(exc).__name__, exc, self.node)
        if self.leading != was:
            log.info("leader: node %s %s the periodic work (events, digests, reports)", self.node,
                     "now runs" if self.leading else "no longer runs")
        return self.leading

    async def keep(self) -> None:
        """Check at every interval for as long as the engine runs."""
        while True:
            await asyncio.to_thread(self.check)
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        """Give the lead up at once (a clean stop): another node needs no wait to take it."""
        if self._shared and self.leading and self._conn is not None:
            try:  # at once: a closed session's locks go only when its server process has exited
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            except Exception:  # noqa: BLE001 - the connection is gone, and the lock with it
                pass
        self.leading = not self._shared
        self._drop()
        if self._engine is not None:
            self._engine.dispose()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # closing the session releases its advisory locks
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._conn = None
