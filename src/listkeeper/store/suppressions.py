"""Suppressed addresses added at run time."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from .tables import suppressions


def addresses(conn: Connection) -> frozenset[str]:
    return frozenset(conn.execute(select(suppressions.c.address)).scalars())


def listing(conn: Connection) -> list[tuple[str, str, float]]:
    return [tuple(r) for r in conn.execute(select(suppressions).order_by(suppressions.c.address))]


def add(conn: Connection, address: str, reason: str, now: float) -> bool:
    address = address.strip().lower()
    if conn.execute(select(suppressions.c.address).where(suppressions.c.address == address)).first():
        return False
    conn.execute(insert(suppressions).values(address=address, reason=reason, added_at=now))
    return True


def remove(conn: Connection, address: str) -> bool:
    return conn.execute(delete(suppressions).where(suppressions.c.address == address.strip().lower())).rowcount > 0
