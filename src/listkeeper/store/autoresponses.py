"""How many automatic replies each address got today: past the limit, we stay silent (no backscatter)."""

from __future__ import annotations

import time

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from .tables import autoresponses


def allow(conn: Connection, address: str, now: float, limit: int) -> bool:
    """Count one more automatic reply to `address` today (UTC); False when that would pass `limit`."""
    address = address.lower()
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    count = conn.execute(select(autoresponses.c.count).where(autoresponses.c.address == address,
                                                             autoresponses.c.day == day)).scalar()
    if count is None:
        conn.execute(insert(autoresponses).values(address=address, day=day, count=1))
        return True
    if count >= limit:
        return False
    conn.execute(update(autoresponses).where(autoresponses.c.address == address, autoresponses.c.day == day)
                 .values(count=count + 1))
    return True


def forget_before(conn: Connection, now: float, days: int = 2) -> int:
    day = time.strftime("%Y-%m-%d", time.gmtime(now - days * 86400))
    return conn.execute(autoresponses.delete().where(autoresponses.c.day < day)).rowcount
