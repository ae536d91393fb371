"""The store on SQLite and on the PostgreSQL server of this machine: migrations and the queue."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store import queue
from listkeeper.store.database import is_current
from listkeeper.store.tables import metadata

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_available() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    try:
        with create_engine(PG_ADMIN).connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means: skip, and say why
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable: {type(exc).__name__}"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store.open(f"sqlite:///{tmp_path}/store.db", clock=lambda: 1000.0)
        yield s
        s.close()
        return
    reason = postgres_available()
    if reason:
        pytest.skip(f"PostgreSQL store tests skipped: {reason}")
    name = f"lk_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    s = Store.open(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", clock=lambda: 1000.0)
    yield s
    s.close()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_migrations_match_the_tables(store):
    assert is_current(store.engine)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_migrating_again_keeps_data(store):
    with store.engine.begin() as conn:
        applied_config.write_resources(conn, [applied_config.ResourceWrite("Domain", "d", {"a": 1}, "h", "f:1:1")],
                                       [], 1.0)
    again = Store.open(store.engine.url.render_as_string(hide_password=False))
    with again.engine.connect() as conn:
        assert applied_config.generation(conn) == 1
        assert applied_config.applied_resources(conn)[("Domain", "d")].spec == {"a": 1}
    again.close()


def test_spool_claim_and_record(store):
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 3, (
        queue.PostRecord("l", "queued", "member", b"copy", "l-bounces@x.org", ("b@y.org", "c@y.org")),
    ))
    with store.engine.begin() as conn:
        (inbound_id,) = queue.spool(conn, [record], 1000.0)
    with store.engine.begin() as conn:
        due = queue.claim_due(conn, 1000.0, 10, lease=60)
        assert [d.recipient for d in due] == ["b@y.org", "c@y.org"]
        assert queue.claim_due(conn, 1000.0, 10, lease=60) == []  # claimed ones are not due
        data = queue.message_data(conn, [d.message_id for d in due])
        assert list(data.values()) == [b"copy"]
    with store.engine.begin() as conn:
        queue.record_outcomes(conn, [queue.Outcome(due[0].delivery_id, "delivered", "pickup"),
                                     queue.Outcome(due[1].delivery_id, "deferred", "relay", "451 busy", 1060.0)],
                              1001.0)
        assert queue.queue_counts(conn) == {"delivered": 1, "deferred": 1}
        assert queue.claim_due(conn, 1059.0, 10, lease=60) == []
        assert [d.attempts for d in queue.claim_due(conn, 1060.0, 10, lease=60)] == [1]


def test_expired_leases_are_released(store):
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 1, (
        queue.PostRecord("l", "queued", "member", b"copy", "", ("b@y.org",)),))
    with store.engine.begin() as conn:
        queue.spool(conn, [record], 1000.0)
        queue.claim_due(conn, 1000.0, 10, lease=60)
        assert queue.release_expired(conn, 1030.0) == 0
        assert queue.release_expired(conn, 1061.0) == 1
        assert len(queue.claim_due(conn, 1061.0, 10, lease=60)) == 1
