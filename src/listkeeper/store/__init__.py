"""The store: the one source of truth at run time. Knows no SMTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy.engine import Connection, Engine

from . import config, queue
from .database import DEFAULT_URL, StoreError, create_store_engine, migrate, store_url


@dataclass
class Store:
    engine: Engine
    clock: Callable[[], float] = field(default=time.time)
    # the applied resources reconcile decoded last: the next reconcile fetches only those that changed
    applied: config.AppliedMemo = field(default_factory=config.AppliedMemo, repr=False, compare=False)

    @classmethod
    def open(cls, url: str | None = None, clock: Callable[[], float] = time.time) -> "Store":
        engine = create_store_engine(store_url(url))
        migrate(engine)
        return cls(engine, clock)

    def close(self) -> None:
        self.engine.dispose()

    def now(self) -> float:
        return self.clock()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A transaction that reads, then writes what it read decided. On SQLite it holds the write lock
        from its first statement (BEGIN IMMEDIATE). Without it, Python's sqlite3 begins the transaction
        only at the first INSERT/UPDATE/DELETE: what was read before may be stale by then (another
        connection committed meanwhile), and where a read snapshot is still held (an open cursor, a
        temporary table written first) SQLite fails the write at once ("database is locked") instead of
        waiting out busy_timeout."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn


__all__ = ["DEFAULT_URL", "Store", "StoreError", "config", "queue", "store_url"]
