"""Leases on claimed deliveries (`deliveries.lease_until`, `claimed_by`): renewed, released when they
run out. Claiming is queue.py's `claim_due`; delivery/leases.py is the node's side."""

from __future__ import annotations

from sqlalchemy import Float, cast, func, select, update
from sqlalchemy.engine import Connection

from .tables import deliveries

# PostgreSQL: the server's clock, which every node reads alike (a node's own may be off by minutes when
# its NTP is broken). Stable within a statement, so a claim's or a release's rows all see one instant.
_SERVER_NOW = cast(func.extract("epoch", func.statement_timestamp()), Float)


def lease_clock(conn: Connection, now: float):
    """The time leases are set and compared by: on PostgreSQL, shared by nodes, the server's clock, so a
    node whose clock runs ahead never sees a live node's lease as expired (and sends its delivery again),
    nor does one running behind renew its leases into the past; on SQLite (one node) the node's `now`."""
    return _SERVER_NOW if conn.dialect.name == "postgresql" else now


def release_expired(conn: Connection, now: float) -> int:
    """Deliveries whose lease ran out (a crashed node) become due again. Who claimed them stays
    recorded, so the outcome of a node that was only slow still counts until another node claims them.
    PostgreSQL: rows another transaction holds (that slow node writing its outcomes) are skipped, not
    waited for (a deadlock otherwise); the next release finds them if they are still expired."""
    return _release(conn, deliveries.c.lease_until < lease_clock(conn, now), now)


def release_all(conn: Connection, now: float) -> int:
    """Every lease, expired or not: this is the only node (SQLite, or a node without a name)."""
    return _release(conn, None, now)


def _release(conn: Connection, condition, now: float) -> int:
    leased = select(deliveries.c.id).where(deliveries.c.state == "sending")
    if condition is not None:
        leased = leased.where(condition)
    return conn.execute(update(deliveries).where(deliveries.c.id.in_(leased.with_for_update(skip_locked=True)))
                        .values(state="deferred", lease_until=None, updated_at=now)).rowcount


def release_own(conn: Connection, owner: str, now: float) -> int:
    """A node starting again: what it was sending when it stopped is due again. Other nodes' leases
    are theirs until they expire."""
    return conn.execute(update(deliveries).where(
        deliveries.c.state == "sending", deliveries.c.claimed_by == owner,
    ).values(state="deferred", lease_until=None, updated_at=now)).rowcount


def renew_leases(conn: Connection, owner: str, now: float, *, lease: float) -> int:
    """A live node keeps what it claimed: its leases still running are pushed on to `lease` seconds from
    now (`lease_clock`), so a short lease is only ever lost by a node that stopped renewing (it died, or
    lost the store).

    PostgreSQL: rows locked by another transaction (this node's own outcome write, in another thread)
    are skipped, not waited for: they are leaving 'sending', and two UPDATEs locking the same rows in
    different orders would deadlock. A row skipped now is renewed at the next renewal, well before expiry."""
    at = lease_clock(conn, now)
    mine = (select(deliveries.c.id)
            .where(deliveries.c.state == "sending", deliveries.c.claimed_by == owner, deliveries.c.lease_until >= at)
            .with_for_update(skip_locked=True))
    return conn.execute(update(deliveries).where(deliveries.c.id.in_(mine)).values(lease_until=at + lease)).rowcount
