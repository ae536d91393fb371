"""Open a store by URL, bring its schema up to date with Alembic, tune SQLite for durability."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError

DEFAULT_URL = "sqlite:///var/listkeeper.db"
MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6C6B_6D67  # 'lkmg': a PostgreSQL advisory lock held while the schema is upgraded


class StoreError(Exception):
    """The store cannot be opened or used; the message is meant for the operator."""


def store_url(url: str | None) -> str:
    """The URL given (or LISTKEEPER_STORE, or the default); a plain postgresql:// (or postgres://) URL
    means psycopg 3, the driver listkeeper installs, not SQLAlchemy's default psycopg2."""
    url = url or os.environ.get("LISTKEEPER_STORE") or DEFAULT_URL
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def create_store_engine(url: str) -> Engine:
    try:
        engine = create_engine(url, future=True)
    except (ArgumentError, ImportError) as exc:
        raise StoreError(f"bad store URL {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

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
    except OperationalError as exc:
        raise StoreError(f"cannot open store {engine.url.render_as_string(hide_password=True)}: {exc.orig}") from None


def is_current(engine: Engine) -> bool:
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        head = ScriptDirectory.from_config(alembic_config(connection)).get_current_head()
    return current == head
