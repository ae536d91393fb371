"""Keys the engine signs with (e.g. one-click unsubscribe links), kept in the store's `meta` table.

Every node of a cluster reads the same store, so a link signed by one node is honoured by all. The key
is made by whichever node needs it first; callers must never log or print it."""

from __future__ import annotations

import secrets

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .tables import meta

KEY_BYTES = 32


def signing_key(engine: Engine, purpose: str) -> bytes:
    """The key for `purpose`, made (32 random bytes) on first use; two nodes racing get the same one."""
    name = f"signing_key.{purpose}"
    for _ in range(3):
        with engine.connect() as conn:
            found = conn.execute(select(meta.c.value).where(meta.c.key == name)).scalar()
        if found is not None:
            return bytes.fromhex(found)
        try:
            with engine.begin() as conn:
                conn.execute(insert(meta).values(key=name, value=secrets.token_hex(KEY_BYTES)))
        except IntegrityError:
            pass  # another node made it first: read theirs
    raise RuntimeError(f"the store keeps no {purpose} signing key and none could be made")


def signing_key_in(conn: Connection, purpose: str) -> bytes:
    """`signing_key` inside the caller's transaction (the delivery claim, the bounce round): made there on
    first use, never in a second connection that would wait for this one's write lock on SQLite."""
    name = f"signing_key.{purpose}"
    found = conn.execute(select(meta.c.value).where(meta.c.key == name)).scalar()
    if found is None:
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        conn.execute(dialect.insert(meta).values(key=name, value=secrets.token_hex(KEY_BYTES))
                     .on_conflict_do_nothing(index_elements=["key"]))
        found = conn.execute(select(meta.c.value).where(meta.c.key == name)).scalar_one()
    return bytes.fromhex(found)


def verp_key(conn: Connection) -> bytes:
    """The key VERP return paths are tagged with (made on first use, in the caller's transaction)."""
    return signing_key_in(conn, "verp")
