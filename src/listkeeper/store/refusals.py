"""Inbound mail refused at SMTP time, each with its rule and reason: what the barring report reads."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from .tables import refusals


def record(conn: Connection, at: float, peer: str | None, mail_from: str, recipients: Iterable[str], rule: str,
           reason: str, reply: str) -> None:
    conn.execute(insert(refusals).values(at=at, peer=peer, mail_from=mail_from, recipients=json.dumps(list(recipients)),
                                         rule=rule, reason=reason, reply=reply))


def between(conn: Connection, since: float, until: float) -> list[dict]:
    rows = conn.execute(select(refusals).where(refusals.c.at >= since, refusals.c.at < until).order_by(refusals.c.id))
    return [{**dict(r._mapping), "recipients": json.loads(r.recipients)} for r in rows]
