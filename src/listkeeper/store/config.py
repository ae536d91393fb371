"""Applied configuration: the manifests last reconciled, and the store's generation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, delete, func, insert, select, text, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from .tables import (
    archive_pending, archives, bounces, confirmations, deliveries, digest_pending, digests, event_counters,
    event_fires, holds, messages, meta, resources, subscribers, subscription_changes,
)

# a list's runtime data besides its messages: renamed with the list, purged with it
LIST_TABLES = (subscribers, event_counters, event_fires, digest_pending, digests, archive_pending, archives, holds,
               confirmations, bounces, subscription_changes)


# PostgreSQL: each applied generation is announced here (NOTIFY), so every node reloads at once
CONFIG_CHANNEL = "listkeeper_config"


class LockTimeout(Exception):
    """Another reconcile holds the configuration lock."""


class ResourceWriteFailed(Exception):
    def __init__(self, kind: str, name: str, cause: Exception):
        reason = getattr(cause, "orig", None) or cause
        super().__init__(f"{kind}/{name}: {type(reason).__name__}: {reason}")


@dataclass(frozen=True)
class AppliedResource:
    kind: str
    name: str
    spec: dict[str, Any]  # as in force now
    hash: str
    generation: int
    source: str
    last_applied: dict[str, Any] | None = None  # what reconcile last wrote; differs from spec = drift
    annotations: dict[str, str] = field(default_factory=dict)
    deleted_at: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


@dataclass(frozen=True)
class ResourceWrite:
    kind: str
    name: str
    spec: dict[str, Any]
    hash: str
    source: str
    annotations: dict[str, str] = field(default_factory=dict)
    previous_name: str | None = None  # a rename keeps the runtime data


def canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def generation(conn: Connection) -> int:
    value = conn.execute(select(meta.c.value).where(meta.c.key == "generation")).scalar()
    return int(value) if value is not None else 0


def generation_in_force(conn: Connection) -> int:
    """The generation, held steady until the caller's transaction ends: what it reads next (subscribers
    synced by reconcile) belongs to it. SQLite: the caller already writes, so no reconcile can commit;
    PostgreSQL: a share lock on the row reconcile locks for update."""
    query = select(meta.c.value).where(meta.c.key == "generation")
    if conn.dialect.name != "sqlite":
        query = query.with_for_update(read=True)
    value = conn.execute(query).scalar()
    return int(value) if value is not None else 0


def lock(conn: Connection, timeout: float) -> int:
    """Take the configuration lock for this transaction (waiting at most `timeout` s); returns the generation."""
    dialect = conn.dialect.name
    try:
        if dialect == "sqlite":
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            conn.execute(update(meta).where(meta.c.key == "generation").values(value=meta.c.value))
        else:
            conn.execute(text(f"SET LOCAL lock_timeout = '{int(timeout * 1000)}ms'"))
            conn.execute(select(meta.c.value).where(meta.c.key == "generation").with_for_update())
    except OperationalError as exc:
        raise LockTimeout(f"another reconcile holds the configuration lock (waited {timeout:g}s): "
                          f"{exc.orig}") from None
    return generation(conn)


def _row(row) -> AppliedResource:
    spec = json.loads(row["spec"])
    last = row["last_applied"]
    last_applied = spec if last == row["spec"] else (json.loads(last) if last else None)
    annotations = json.loads(row["annotations"]) if row["annotations"] not in (None, "{}") else {}
    return AppliedResource(row["kind"], row["name"], spec, row["hash"], row["generation"], row["source"],
                           last_applied, annotations, row["deleted_at"])


def applied_resources(conn: Connection, memo: AppliedMemo | None = None) -> dict[tuple[str, str], AppliedResource]:
    """Every resource in force. With a memo, only the rows that changed since its last read are fetched."""
    if memo is None:
        rows = conn.execute(select(resources).where(resources.c.deleted_at.is_(None))).mappings()
        return {item.key: item for item in map(_row, rows)}
    prints = fingerprints(conn)
    known = memo.by_key
    stale = [key for key, found in prints.items() if key not in known or known[key][0] != found]
    fresh = {item.key: item for item in map(_row, _rows_of(conn, stale, len(prints)))}
    kept: dict[tuple[str, str], tuple[tuple[int, str], AppliedResource]] = {}
    for key, found in prints.items():
        if key in fresh:
            kept[key] = ((fresh[key].generation, fresh[key].hash), fresh[key])
        elif key in known and known[key][0] == found:
            kept[key] = known[key]
    memo.by_key = kept
    return {key: item for key, (_, item) in kept.items()}


class AppliedMemo:
    """The applied resources decoded last, by (generation, hash): a reload among thousands of
    resources fetches and decodes only those that changed."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], tuple[tuple[int, str], AppliedResource]] = {}


def fingerprints(conn: Connection) -> dict[tuple[str, str], tuple[int, str]]:
    """(kind, name) -> (generation, hash) of every resource in force, read as one row: stepping through
    thousands of rows is what a reload pays most for while SMTP sessions keep the interpreter busy
    (each row gives the interpreter lock away and waits to get it back)."""
    line = (resources.c.kind + " " + resources.c.name + " " + cast(resources.c.generation, String) + " "
            + resources.c.hash)
    joined = conn.execute(select(func.aggregate_strings(line, "\n"))
                          .where(resources.c.deleted_at.is_(None))).scalar()
    out = {}
    for entry in (joined or "").split("\n"):
        if entry:
            kind, name, generation, spec_hash = entry.split(" ")
            out[(kind, name)] = (int(generation), spec_hash)
    return out


FEW = 500  # up to this many resources are fetched by key; more, and all rows are read


def _rows_of(conn: Connection, keys: list[tuple[str, str]], total: int):
    """The rows in force of these resources (all rows when that is most of them)."""
    if not keys:
        return []
    query = select(resources).where(resources.c.deleted_at.is_(None))
    if len(keys) <= min(FEW, total // 2):
        query = query.where(tuple_(resources.c.kind, resources.c.name).in_(keys))
    return conn.execute(query).mappings()


def applied_specs(conn: Connection, keys: list[tuple[str, str]] | None = None) -> list[tuple[str, str, str, str]]:
    """(kind, name, hash, spec JSON) of the resources in force; of `keys` only (at most FEW), if given."""
    query = select(resources.c.kind, resources.c.name, resources.c.hash, resources.c.spec) \
        .where(resources.c.deleted_at.is_(None))
    if keys is not None:
        if not keys:
            return []
        query = query.where(tuple_(resources.c.kind, resources.c.name).in_(keys))
    return [tuple(row) for row in conn.execute(query)]


def deleted_resources(conn: Connection) -> dict[tuple[str, str], AppliedResource]:
    rows = conn.execute(select(resources).where(resources.c.deleted_at.is_not(None))).mappings()
    return {item.key: item for item in map(_row, rows)}


def write_resources(conn: Connection, upserts: list[ResourceWrite], deletes: list[tuple[str, str]],
                    now: float, soft_delete_kinds: frozenset[str] = frozenset({"MailingList"})) -> int:
    """Write one reconcile's changes and bump the generation; the caller owns the transaction."""
    new_generation = generation(conn) + 1
    for kind, name in deletes:
        where = (resources.c.kind == kind, resources.c.name == name)
        try:
            if kind in soft_delete_kinds:
                conn.execute(update(resources).where(*where).values(deleted_at=now, generation=new_generation))
            else:
                conn.execute(delete(resources).where(*where))
        except Exception as exc:
            raise ResourceWriteFailed(kind, name, exc) from exc
    for item in upserts:
        try:
            _upsert(conn, item, new_generation, now)
        except Exception as exc:
            raise ResourceWriteFailed(item.kind, item.name, exc) from exc
    if conn.execute(update(meta).where(meta.c.key == "generation")
                    .values(value=str(new_generation))).rowcount == 0:
        conn.execute(insert(meta).values(key="generation", value=str(new_generation)))
    if conn.dialect.name == "postgresql":  # sent when this transaction commits, to every listening node
        conn.execute(text("SELECT pg_notify(:channel, :generation)"),
                     {"channel": CONFIG_CHANNEL, "generation": str(new_generation)})
    return new_generation


async def generation_notices(engine, listening=None) -> AsyncIterator[int]:
    """PostgreSQL: each generation committed from now on, as its reconcile commits (LISTEN/NOTIFY).
    `listening`, if given, is called once LISTEN is in place."""
    import psycopg

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CONFIG_CHANNEL}")
        if listening is not None:
            listening()
        async for notice in conn.notifies():
            yield int(notice.payload)


def _upsert(conn: Connection, item: ResourceWrite, new_generation: int, now: float) -> None:
    if item.previous_name:
        rename(conn, item.kind, item.previous_name, item.name)
    body = canonical(item.spec)
    values = dict(spec=body, last_applied=body, hash=item.hash, generation=new_generation,
                  source=item.source, applied_at=now, annotations=canonical(item.annotations), deleted_at=None)
    found = conn.execute(update(resources).where(resources.c.kind == item.kind,
                                                 resources.c.name == item.name).values(**values))
    if found.rowcount == 0:
        conn.execute(insert(resources).values(kind=item.kind, name=item.name, **values))


def rename(conn: Connection, kind: str, old: str, new: str) -> None:
    """Rename a resource, and for a list its runtime data, so nothing is deleted and re-created."""
    if conn.execute(select(resources.c.name).where(resources.c.kind == kind, resources.c.name == new,
                                                   resources.c.deleted_at.is_not(None))).first():
        raise ValueError(f"a deleted {kind} named {new!r} still holds runtime data (restorable until its "
                         f"retention period ends); rename to another name, or purge it first")
    conn.execute(update(resources).where(resources.c.kind == kind, resources.c.name == old).values(name=new))
    if kind == "MailingList":
        for table in (messages, *LIST_TABLES):
            conn.execute(update(table).where(table.c.list_name == old).values(list_name=new))


def purge_deleted(conn: Connection, before: float) -> list[str]:
    """Remove lists soft-deleted before `before`, with their runtime data; returns their names."""
    names = list(conn.execute(select(resources.c.name).where(
        resources.c.kind == "MailingList", resources.c.deleted_at < before)).scalars())
    for name in names:
        post_ids = select(messages.c.id).where(messages.c.list_name == name)
        conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(post_ids)))
        for table in LIST_TABLES:
            conn.execute(delete(table).where(table.c.list_name == name))
        conn.execute(delete(messages).where(messages.c.list_name == name))
        conn.execute(delete(resources).where(resources.c.kind == "MailingList", resources.c.name == name))
    return names


def set_live_spec(conn: Connection, kind: str, name: str, spec: dict[str, Any], spec_hash: str) -> None:
    """Change a resource outside git (an admin command); the next plan shows it as drift."""
    conn.execute(update(resources).where(resources.c.kind == kind, resources.c.name == name)
                 .values(spec=canonical(spec), hash=spec_hash))
