"""Open a store by URL, bring its schema up to date with Alembic, tune SQLite for durability."""

from __future__ import annotations

import os
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
import sqlalchemy
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError

DEFAULT_URL = "sqlite:///var/listkeeper.db"
MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6C6B_6D67  # 'lkmg': a PostgreSQL advisory lock held while the schema is upgraded


class StoreError(Exception):
    """The store cannot be opened or used; the message is meant for the operator."""


def store_url(url: str | None) -> str:
    return url or os.environ.get("LISTKEEPER_STORE") or DEFAULT_URL


def _with_driver(url: str) -> str:
    """A plain postgresql:// URL means psycopg 3, the driver listkeeper installs: SQLAlchemy 2.1's default,
    while 2.0 would look for psycopg2."""
    if url.startswith("postgresql://") and sqlalchemy.__version__.startswith("2.0."):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _shown(url: str) -> str:
    """The URL as errors show it: never with its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # e.g. a port that is not a number: hide what looks like a password
        return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def create_store_engine(url: str) -> Engine:
    try:
        engine = create_engine(_with_driver(url), future=True)
    except (ArgumentError, ImportError, ValueError) as exc:  # ValueError: a port that is not a number
        raise StoreError(f"bad store URL {_shown(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open store {_shown(url)}: cannot create the folder of {database}: "
                                 f"{exc.strerror or exc}") from None

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # every connection: WAL, durable commits
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision; data is kept."""
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":  # nodes starting together: one migrates, the others wait
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            command.upgrade(alembic_config(connection), "head")
    except DBAPIError as exc:  # cannot connect, not a database, no such database, permission denied ...
        raise StoreError(f"cannot open store {engine.url.render_as_string(hide_password=True)}: "
                         f"{_one_line(exc.orig)}") from None


def _one_line(error: BaseException | None) -> str:
    """A driver's message on one line (PostgreSQL's add hints on lines of their own)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def is_current(engine: Engine) -> bool:
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        head = ScriptDirectory.from_config(alembic_config(connection)).get_current_head()
    return current == head
