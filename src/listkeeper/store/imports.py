"""Bulk import of a roster into a list's static subscribers: a few statements per chunk, one transaction each.

Each chunk of rows is one transaction that holds the write lock from its first statement: it reads the
chunk's existing members in one query, writes new members, updates and other changes with one executemany
each, and logs and fires the `join` of every new receiver with one INSERT ... SELECT per table. A crash loses at most the chunk in flight, never half a row; running the
import again adds what is missing and changes nothing else (a member already as the file says is
'unchanged'). Manifest members belong to git: a row that would change one is skipped with a note.
A member's state (unsubscribed, disabled by bounces) is theirs: the file's state applies to new rows only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.engine import Connection

from . import Store
from .roster import Note, Problem, Row
from .subscribers import receives_of
from .tables import event_counters, event_fires, subscribers, subscription_changes

CHUNK = 20_000  # rows per transaction (at most ~32,000: SQLite's bound parameters); the engine waits ~0.2 s at most
SOURCE = "import"

_EXISTING = (f"SELECT address, name, roles, state, source FROM {subscribers.name} "
             f"WHERE list_name = ? AND address IN ({{marks}})")
_ADD = (f"INSERT INTO {subscribers.name} (list_name, address, source, joined_at, name, roles, receives, state, "
        f"updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UPDATE = (f"UPDATE {subscribers.name} SET name = ?, roles = ?, receives = ?, updated_at = ? "
           f"WHERE list_name = ? AND address = ?")
_LOG = (f"INSERT INTO {subscription_changes.name} (list_name, address, action, source, detail, at) "
        f"VALUES (?, ?, ?, ?, ?, ?)")
# the join of a chunk's new receivers, set-based: one statement each, selecting the members just written
_JOIN_LOG = (f"INSERT INTO {subscription_changes.name} (list_name, address, action, source, detail, at) "
             f"SELECT list_name, address, 'join', '{SOURCE}', NULL, ? FROM {subscribers.name} "
             f"WHERE list_name = ? AND address IN ({{marks}})")
_JOIN_COUNT = (f"INSERT INTO {event_counters.name} (list_name, address, event, count, last_at) "
               f"SELECT list_name, address, 'join', 1, ? FROM {subscribers.name} "
               f"WHERE list_name = ? AND address IN ({{marks}}) "
               f"ON CONFLICT (list_name, address, event) DO UPDATE SET count = {event_counters.name}.count + 1, "
               f"last_at = excluded.last_at")
_JOIN_FIRE = (f"INSERT INTO {event_fires.name} (list_name, address, event, at) "
              f"SELECT list_name, address, 'join', ? FROM {subscribers.name} "
              f"WHERE list_name = ? AND address IN ({{marks}})")


@dataclass
class ImportReport:
    rows: int = 0  # valid rows read
    added: int = 0  # new members (joined + added without receiving)
    joined: int = 0  # new or existing members who now receive posts or digests (each fired `join`)
    updated: int = 0  # existing members whose roles or name changed
    left: int = 0  # existing members whose new roles receive nothing
    unchanged: int = 0
    skipped: int = 0  # manifest members the file would change
    problems: list[Problem] = field(default_factory=list)  # lines not imported
    notes: list[Note] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return self.added + self.updated


@dataclass
class _Writes:
    add: list[tuple] = field(default_factory=list)
    update: list[tuple] = field(default_factory=list)
    log: list[tuple] = field(default_factory=list)  # changes other than joins
    joined: list[str] = field(default_factory=list)  # logged and fired by _JOIN_*


def _sql(conn: Connection, statement: str) -> str:
    return statement if conn.dialect.paramstyle == "qmark" else statement.replace("?", "%s")


def _lock(conn: Connection) -> None:
    """Hold the write lock from the start, so nobody adds a member between our read and our write
    (on SQLite, Store.writing's BEGIN IMMEDIATE does it)."""
    if conn.dialect.name == "postgresql":  # (SQLite: Store.writing took the write lock already)
        conn.exec_driver_sql(f"LOCK TABLE {subscribers.name} IN SHARE ROW EXCLUSIVE MODE")


def _existing(conn: Connection, list_name: str, addresses: list[str]) -> dict[str, tuple]:
    cursor = conn.connection.cursor()  # the DBAPI cursor of this transaction: plain tuples, fetched at once
    try:
        cursor.execute(_sql(conn, _EXISTING.format(marks=", ".join(["?"] * len(addresses)))), (list_name, *addresses))
        return {row[0]: row for row in cursor.fetchall()}
    finally:
        cursor.close()


@lru_cache(maxsize=64)
def _receives(roles: str) -> str:
    return receives_of(roles.split(","))


def plan_chunk(list_name: str, rows: list[Row], existing: dict[str, tuple], now: float,
               report: ImportReport) -> _Writes:
    """What one chunk writes, decided from the rows and the members the store already has (pure)."""
    out = _Writes()
    for row in rows:
        have = existing.get(row.address)
        if have is None:
            roles, state = row.roles or "regular", row.state or "active"
            receives = _receives(roles)
            out.add.append((list_name, row.address, SOURCE, now, row.name, roles, receives, state, now))
            report.added += 1
            if receives and state == "active":
                out.joined.append(row.address)
            else:
                detail = roles if state == "active" else f"{roles}; {state}"
                out.log.append((list_name, row.address, "roles", SOURCE, detail, now))
            continue
        _, name, roles, state, source = have
        new_name = row.name if row.name is not None else name
        new_roles = row.roles if row.roles is not None else roles
        if row.state is not None and row.state != state:
            report.notes.append(Note(row.line, f"{row.address} is {state} in the store; the file's state "
                                               f"{row.state!r} is not applied (a member's own choice wins)"))
        if new_name == name and new_roles == roles:
            report.unchanged += 1
            continue
        if source == "manifest":
            report.skipped += 1
            report.notes.append(Note(row.line, f"{row.address} comes from the manifest of {list_name}; "
                                               "change it there (row skipped)"))
            continue
        before, after = _receives(roles), _receives(new_roles)
        out.update.append((new_name, new_roles, after, now, list_name, row.address))
        report.updated += 1
        if new_roles != roles:
            out.log.append((list_name, row.address, "roles", SOURCE, new_roles, now))
        if state == "active" and after and not before:
            out.joined.append(row.address)
        elif state == "active" and before and not after:
            out.log.append((list_name, row.address, "leave", SOURCE, None, now))
            report.left += 1
    report.joined += len(out.joined)
    return out


def import_chunk(conn: Connection, list_name: str, rows: list[Row], now: float, report: ImportReport) -> None:
    """One chunk, set-based, in the caller's Store.writing() transaction, before anything else ran in it."""
    _lock(conn)
    existing = _existing(conn, list_name, [r.address for r in rows])
    writes = plan_chunk(list_name, rows, existing, now, report)
    if writes.add:
        writes.add.sort(key=lambda row: row[1])  # address order: neighbours land on the same index pages
        conn.exec_driver_sql(_sql(conn, _ADD), writes.add)
    if writes.update:
        conn.exec_driver_sql(_sql(conn, _UPDATE), writes.update)
    if writes.log:
        conn.exec_driver_sql(_sql(conn, _LOG), writes.log)
    if writes.joined:  # the list's built-in join event, as subscribers.subscribe records it
        marks = ", ".join(["?"] * len(writes.joined))
        for statement in (_JOIN_LOG, _JOIN_COUNT, _JOIN_FIRE):
            conn.exec_driver_sql(_sql(conn, statement.format(marks=marks)), (now, list_name, *writes.joined))


def import_roster(store: Store, list_name: str, items: Iterable[Row | Problem | Note], *, chunk: int = CHUNK,
                  on_chunk: Callable[[ImportReport], None] | None = None) -> ImportReport:
    """Import a roster (as roster.read yields it: each address once) into a static list, one transaction per
    chunk of rows. The caller checks that the list exists and is not dynamic."""
    report = ImportReport()
    batch: list[Row] = []

    def flush() -> None:
        with store.writing() as conn:
            import_chunk(conn, list_name, batch, store.now(), report)
        report.rows += len(batch)
        batch.clear()
        if on_chunk is not None:
            on_chunk(report)

    for item in items:
        if type(item) is Row:
            batch.append(item)
            if len(batch) >= chunk:
                flush()
        elif type(item) is Problem:
            report.problems.append(item)
        else:
            report.notes.append(item)
    if batch:
        flush()
    report.notes.sort()
    return report


def exported(conn: Connection, list_name: str) -> Iterator[tuple[str, str | None, str, str]]:
    """The list's subscribers as roster rows (address, name, roles, state), in address order, streamed."""
    c = subscribers.c
    for row in conn.execute(select(c.address, c.name, c.roles, c.state).where(c.list_name == list_name)
                            .order_by(c.address)):
        yield tuple(row)
