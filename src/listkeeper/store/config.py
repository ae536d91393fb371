"""Applied configuration: the manifests last reconciled, and the store's generation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from .tables import meta, resources


@dataclass(frozen=True)
class AppliedResource:
    kind: str
    name: str
    spec: dict[str, Any]
    hash: str
    generation: int
    source: str

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


def generation(conn: Connection) -> int:
    value = conn.execute(select(meta.c.value).where(meta.c.key == "generation")).scalar()
    return int(value) if value is not None else 0


def applied_resources(conn: Connection) -> dict[tuple[str, str], AppliedResource]:
    rows = conn.execute(select(resources)).mappings()
    out = {}
    for row in rows:
        item = AppliedResource(row["kind"], row["name"], json.loads(row["spec"]), row["hash"],
                               row["generation"], row["source"])
        out[item.key] = item
    return out


def write_resources(conn: Connection, upserts: list[ResourceWrite], deletes: list[tuple[str, str]],
                    now: float) -> int:
    """Write one reconcile's changes and bump the generation; the caller owns the transaction."""
    new_generation = generation(conn) + 1
    for kind, name in deletes:
        conn.execute(delete(resources).where(resources.c.kind == kind, resources.c.name == name))
    for item in upserts:
        values = dict(spec=json.dumps(item.spec, sort_keys=True, separators=(",", ":")), hash=item.hash,
                      generation=new_generation, source=item.source, applied_at=now)
        found = conn.execute(update(resources).where(resources.c.kind == item.kind,
                                                     resources.c.name == item.name).values(**values))
        if found.rowcount == 0:
            conn.execute(insert(resources).values(kind=item.kind, name=item.name, **values))
    if conn.execute(update(meta).where(meta.c.key == "generation")
                    .values(value=str(new_generation))).rowcount == 0:
        conn.execute(insert(meta).values(key="generation", value=str(new_generation)))
    return new_generation
