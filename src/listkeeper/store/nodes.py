"""The engine nodes serving from this store and the configuration generation each runs: written by
every engine, read by `listkeeper status` (and by nodes, to see each other)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection

from .tables import engine_nodes


# PostgreSQL: the advisory lock whose holder runs the periodic work (engine/leadership.py), and the
# application_name its connection carries
LEADER_LOCK = 0x6C6B_6C64  # 'lkld'
LEADER_APPLICATION = "listkeeper leadership "


@dataclass(frozen=True)
class Node:
    node: str
    generation: int
    started_at: float
    loaded_at: float
    seen_at: float
    stopped_at: float | None
    listening: str


def started(conn: Connection, node: str, generation: int, now: float, listening: str) -> None:
    values = dict(generation=generation, started_at=now, loaded_at=now, seen_at=now, stopped_at=None,
                  listening=listening)
    if conn.execute(update(engine_nodes).where(engine_nodes.c.node == node).values(**values)).rowcount == 0:
        conn.execute(insert(engine_nodes).values(node=node, **values))


def loaded(conn: Connection, node: str, generation: int, now: float) -> None:
    conn.execute(update(engine_nodes).where(engine_nodes.c.node == node)
                 .values(generation=generation, loaded_at=now, seen_at=now))


def seen(conn: Connection, node: str, now: float) -> None:
    conn.execute(update(engine_nodes).where(engine_nodes.c.node == node).values(seen_at=now))


def stopped(conn: Connection, node: str, now: float) -> None:
    conn.execute(update(engine_nodes).where(engine_nodes.c.node == node).values(stopped_at=now, seen_at=now))


def listing(conn: Connection) -> list[Node]:
    rows = conn.execute(select(engine_nodes).order_by(engine_nodes.c.node))
    return [Node(r.node, r.generation, r.started_at, r.loaded_at, r.seen_at, r.stopped_at, r.listening)
            for r in rows]


def leader(conn: Connection) -> str | None:
    """PostgreSQL: the node holding the leadership lock now; None when none does (or on SQLite, where
    the one node always leads)."""
    if conn.dialect.name != "postgresql":
        return None
    name = conn.execute(text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = :key AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),  # not another store's
        {"key": LEADER_LOCK}).scalar()
    return name.removeprefix(LEADER_APPLICATION) if name else None


def named_elsewhere(conn: Connection, node: str) -> bool:
    """PostgreSQL: whether a live engine already runs under this node name (its leadership connection,
    which carries the name, is open). Ask before this engine opens its own. SQLite: never."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND pid <> pg_backend_pid() "
        "AND datname = current_database()"),
        {"name": f"{LEADER_APPLICATION}{node}"[:63]}).scalar())
