"""Member directories: a list's query compiled to one parametrised SQL statement, streamed.

No value is ever spliced into SQL text: every criterion becomes a SQLAlchemy Core expression with
bound parameters. A CSV directory is loaded into an in-memory SQLite table, so both kinds of source
run the very same statement.
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

from sqlalchemy import (
    Boolean, Column, Date, DateTime, Integer, MetaData, String, Table, Text, and_, create_engine, except_, func,
    not_, or_, select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement, Select

from listkeeper.manifests.directory import Criterion, FieldType, MemberDirectorySpec, resolve_date

CHUNK = 5000
TYPES = {FieldType.string: Text, FieldType.enum: Text, FieldType.date: Date, FieldType.datetime: DateTime,
         FieldType.bool: Boolean, FieldType.int: Integer}
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class DirectoryError(Exception):
    pass


def table_of(spec: MemberDirectorySpec) -> Table:
    """The directory as a Table with the declared field types (a view needs no reflection)."""
    metadata = MetaData()
    schema, _, name = spec.source.sql.table.rpartition(".") if spec.source.sql else ("", "", "members")
    columns = [Column(spec.email, String, key="__email")]
    for alt in spec.alternate_addresses:
        columns.append(Column(alt, String, key=f"__alt_{alt}"))
    for field_name, f in spec.fields.items():
        columns.append(Column(f.column or field_name, TYPES[f.type], key=field_name))
    return Table(name, metadata, *columns, schema=schema or None)


def engine_of(spec: MemberDirectorySpec) -> Engine:
    key = spec.model_dump_json()
    with _lock:
        if key not in _engines:
            _engines[key] = _open(spec)
        return _engines[key]


def _open(spec: MemberDirectorySpec) -> Engine:
    if spec.source.sql:
        return create_engine(read_only(make_url(spec.source.sql.url)))
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    table = table_of(spec)
    table.metadata.create_all(engine)
    try:
        with open(spec.source.csv.path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DirectoryError(f"cannot read {spec.source.csv.path}: {exc}") from None
    by_column = {c.name: c for c in table.columns}
    converted = []
    for row in rows:
        values = {}
        for name, column in by_column.items():
            raw = (row.get(name) or "").strip()
            values[column.key] = _convert(raw, column.type) if raw else None
        converted.append(values)
    if converted:
        with engine.begin() as conn:
            conn.execute(table.insert(), converted)
    return engine


def read_only(url: URL) -> URL:
    """An SQLite file opened read-only: listkeeper only reads a directory, and a plain connect would
    create an empty database where the file is missing (a dry run must write nothing)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return url
    if url.query.get("uri", "").lower() in ("true", "1"):
        return url.update_query_dict({"mode": "ro"})
    path = quote(os.path.abspath(url.database), safe="/")
    return url.set(database=f"file:{path}").update_query_dict({"mode": "ro", "uri": "true"})


def _convert(raw: str, sql_type):
    if isinstance(sql_type, Boolean):
        return raw.lower() in ("1", "true", "yes", "y", "t")
    if isinstance(sql_type, Integer):
        return int(raw)
    if isinstance(sql_type, DateTime):
        return datetime.fromisoformat(raw)
    if isinstance(sql_type, Date):
        return datetime.fromisoformat(raw).date()
    return raw


def condition(table: Table, spec: MemberDirectorySpec, c: Criterion, now: datetime) -> ColumnElement:
    column = table.c[c.field]
    kind = spec.fields[c.field].type
    op, value = c.operator, c.value
    if op in ("is", "is_not"):
        values = value if isinstance(value, list) else [value]
        if kind in (FieldType.date, FieldType.datetime):
            values = [resolve_date(v, now) for v in values]
        if kind in (FieldType.string, FieldType.enum):
            found = func.lower(column).in_([str(v).lower() for v in values])
        else:
            found = column.in_(values)
        return found if op == "is" else or_(column.is_(None), not_(found))
    if op in ("contains", "not_contains"):
        found = func.lower(column).contains(str(value).lower(), autoescape=True)
        return found if op == "contains" else or_(column.is_(None), not_(found))
    day = resolve_date(value, now)
    if kind is FieldType.datetime:
        start = datetime(day.year, day.month, day.day)
        end = datetime.fromordinal(day.toordinal() + 1)
        return {"before": column < start, "after": column >= end, "on": and_(column >= start, column < end)}[op]
    return {"before": column < day, "after": column > day, "on": column == day}[op]


def selection(spec: MemberDirectorySpec, query: Sequence[Criterion], now: datetime | None = None) -> Select:
    """One statement: the distinct, lower-cased addresses the query selects."""
    now = now or datetime.now(timezone.utc)
    table = table_of(spec)
    email = func.lower(func.trim(table.c["__email"]))
    return (select(email.label("email")).where(table.c["__email"].is_not(None), table.c["__email"] != "",
                                               *[condition(table, spec, c, now) for c in query])
            .distinct())


def stream(spec: MemberDirectorySpec, query: Sequence[Criterion], now: datetime | None = None) -> Iterator[str]:
    """The selection, a chunk at a time: never the whole membership in one Python list."""
    with engine_of(spec).connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(selection(spec, query, now))
        for partition in result.partitions(CHUNK):
            for (address,) in partition:
                yield address


def count(spec: MemberDirectorySpec, query: Sequence[Criterion], now: datetime | None = None) -> int:
    stmt = select(func.count()).select_from(selection(spec, query, now).subquery())
    with engine_of(spec).connect() as conn:
        return conn.execute(stmt).scalar_one()


def poster_addresses(spec: MemberDirectorySpec, query: Sequence[Criterion], senders: frozenset[str],
                     now: datetime | None = None) -> bool:
    """Whether any of `senders` is a selected member, by its primary or an alternate address."""
    if not senders:
        return False
    now = now or datetime.now(timezone.utc)
    table = table_of(spec)
    lowered = [s.lower() for s in senders]
    columns = [table.c["__email"], *[table.c[f"__alt_{a}"] for a in spec.alternate_addresses]]
    stmt = select(func.count()).where(or_(*[func.lower(func.trim(c)).in_(lowered) for c in columns]),
                                      *[condition(table, spec, c, now) for c in query])
    with engine_of(spec).connect() as conn:
        return conn.execute(stmt).scalar_one() > 0


def selected_among(spec: MemberDirectorySpec, query: Sequence[Criterion], addresses: Sequence[str],
                   now: datetime | None = None) -> set[str]:
    """Which of `addresses` (lower-case) the query selects, by primary or alternate address: one statement
    over the given addresses, so checking a few members never runs through the whole selection."""
    if not addresses:
        return set()
    now = now or datetime.now(timezone.utc)
    table = table_of(spec)
    conditions = [condition(table, spec, c, now) for c in query]
    columns = [table.c["__email"], *[table.c[f"__alt_{a}"] for a in spec.alternate_addresses]]
    found: set[str] = set()
    with engine_of(spec).connect() as conn:
        for column in columns:
            address = func.lower(func.trim(column))
            found.update(conn.execute(select(address).where(address.in_(list(addresses)), *conditions)
                                      .distinct()).scalars())
    return found


@dataclass(frozen=True)
class SelectionChange:
    before: int
    after: int
    joins: tuple[str, ...]
    leaves: tuple[str, ...]


def change(old: tuple[MemberDirectorySpec, Sequence[Criterion]] | None,
           new: tuple[MemberDirectorySpec, Sequence[Criterion]] | None, examples: int = 5) -> SelectionChange:
    """Counts before and after, and a few who join and leave; SQL EXCEPT when both use one source."""
    now = datetime.now(timezone.utc)
    before = count(*old, now) if old else 0
    after = count(*new, now) if new else 0
    if old and new and old[0] == new[0]:
        with engine_of(new[0]).connect() as conn:
            joins = conn.execute(except_(selection(*new, now), selection(*old, now)).limit(examples)).scalars().all()
            leaves = conn.execute(except_(selection(*old, now), selection(*new, now)).limit(examples)).scalars().all()
        return SelectionChange(before, after, tuple(sorted(joins)), tuple(sorted(leaves)))
    old_set = set(stream(*old, now)) if old else set()
    new_set = set(stream(*new, now)) if new else set()
    return SelectionChange(before, after, tuple(sorted(new_set - old_set)[:examples]),
                           tuple(sorted(old_set - new_set)[:examples]))
