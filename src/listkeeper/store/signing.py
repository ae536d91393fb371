"""Keys the engine signs with (e.g. one-click unsubscribe links), kept in the store's `meta` table.

Every node of a cluster reads the same store, so a link signed by one node is honoured by all. The key
is made by whichever node needs it first; callers must never log or print it."""

from __future__ import annotations

import secrets

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
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
