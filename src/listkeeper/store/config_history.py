"""The history of configuration changes: each applied generation (from which files, by whom) and each
reload refused because a manifest was invalid. `listkeeper status` reads it; engines write it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from .tables import config_history

KEEP = 1000  # rows kept; older ones are trimmed as new ones are written


@dataclass(frozen=True)
class Origin:
    """Who changes the configuration and why: an engine node's reload, or the CLI."""

    origin: str = "reconcile"
    trigger: str = "cli"  # start | watch | sighup | cli | plan
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfigChange:
    at: float
    outcome: str  # applied | rejected
    generation: int  # applied: the new generation; rejected: the one the engine kept
    origin: Origin
    files: tuple[str, ...] = ()  # where the changed resources came from
    changes: tuple[str, ...] = ()  # "update MailingList/members", ...
    errors: tuple[str, ...] = ()  # "path:line:column: field: message", ...


def record(conn: Connection, change: ConfigChange) -> None:
    o = change.origin
    conn.execute(insert(config_history).values(
        at=change.at, outcome=change.outcome, generation=change.generation, origin=o.origin, trigger=o.trigger,
        paths=json.dumps(list(o.paths)), files=json.dumps(list(change.files)),
        changes=json.dumps(list(change.changes)), errors=json.dumps(list(change.errors))))
    oldest_kept = select(config_history.c.id).order_by(config_history.c.id.desc()).offset(KEEP).limit(1) \
        .scalar_subquery()
    conn.execute(delete(config_history).where(config_history.c.id <= oldest_kept))


def _change(row) -> ConfigChange:
    return ConfigChange(row.at, row.outcome, row.generation,
                        Origin(row.origin, row.trigger, tuple(json.loads(row.paths))),
                        tuple(json.loads(row.files)), tuple(json.loads(row.changes)), tuple(json.loads(row.errors)))


def last(conn: Connection, outcome: str) -> ConfigChange | None:
    row = conn.execute(select(config_history).where(config_history.c.outcome == outcome)
                       .order_by(config_history.c.id.desc()).limit(1)).first()
    return _change(row) if row else None


def applied(conn: Connection, generation: int) -> ConfigChange | None:
    """How `generation` came to be, if it was recorded (stores older than this history have no row)."""
    row = conn.execute(select(config_history).where(config_history.c.outcome == "applied",
                                                    config_history.c.generation == generation)
                       .order_by(config_history.c.id.desc()).limit(1)).first()
    return _change(row) if row else None
