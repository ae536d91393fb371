"""max_frequency's windows, shared by the engine nodes and kept across restarts (notify/windows.py is the
engine's side). A window is claimed by one atomic INSERT ... ON CONFLICT DO UPDATE ... WHERE expired:
of several nodes claiming at once, exactly one gets a row back."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .tables import notify_windows as windows

FORGET = 86400.0  # a closed window that held nothing back is forgotten a day after it closed ...
FORGET_HELD = 7 * 86400.0  # ... one holding a count (its rule never ran again), after a week


@dataclass(frozen=True)
class Claim:
    won: bool  # this node runs the actions
    opened_at: float  # when the window now open began (this event's time if won)
    count: int = 1  # won: the events the run stands for (this one and those held back)
    since: float | None = None  # won: the previous run; None: none known


def claim(conn: Connection, rule: str, key: str, at: float, every: float, held: int = 0) -> Claim:
    """Open the window of (rule, key) at `at` if none is open (`every` long, as the rule says now), or
    count the event (and `held` more, held back by this node alone) as held back in the open one."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(windows)
    new = insert.values(rule=rule, key=key, opened_at=at, every=every, held_back=0, count=1 + held, since=None)
    won = conn.execute(new.on_conflict_do_update(
        index_elements=[windows.c.rule, windows.c.key],
        set_={"opened_at": new.excluded.opened_at, "every": new.excluded.every, "held_back": 0,
              "count": windows.c.held_back + new.excluded.count, "since": windows.c.opened_at},
        where=windows.c.opened_at <= new.excluded.opened_at - new.excluded.every,
    ).returning(windows.c.count, windows.c.since)).first()
    if won is not None:
        return Claim(True, at, won.count, won.since)
    opened = conn.execute(update(windows).where(windows.c.rule == rule, windows.c.key == key)
                          .values(held_back=windows.c.held_back + 1 + held).returning(windows.c.opened_at)).scalar()
    return Claim(False, at if opened is None else opened)


def add_held(conn: Connection, held: dict[tuple[str, str], int]) -> None:
    """Events a node held back on its own, knowing the window open: the next run, on any node, counts them."""
    for (rule, key), count in sorted(held.items()):
        conn.execute(update(windows).where(windows.c.rule == rule, windows.c.key == key)
                     .values(held_back=windows.c.held_back + count))


def forget_closed(conn: Connection, now: float) -> int:
    """Windows closed long enough ago that keeping them changes little (a run's `previous_run`, or a count
    no run came to carry) go, so that rules keyed per sender or address never grow the table for ever."""
    closed = windows.c.opened_at + windows.c.every
    return conn.execute(delete(windows).where(or_(
        (closed < now - FORGET) & (windows.c.held_back == 0), closed < now - FORGET_HELD))).rowcount


def window(conn: Connection, rule: str, key: str) -> dict | None:
    row = conn.execute(select(windows).where(windows.c.rule == rule, windows.c.key == key)).first()
    return dict(row._mapping) if row is not None else None
