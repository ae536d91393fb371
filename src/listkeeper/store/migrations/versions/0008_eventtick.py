"""List events at scale: event counters keyed (list, event, address), WITHOUT ROWID on SQLite, and an
index of who receives each list in address order. A tick then reads each event's counters as one
ordered range and merges it with the subscribers; fires of one event are written side by side.

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = ("list_name VARCHAR(253) NOT NULL, address VARCHAR(254) NOT NULL, event VARCHAR(63) NOT NULL, "
           "count INTEGER NOT NULL, last_at FLOAT NOT NULL")


def _rebuild_sqlite(key: str, rowid: str) -> None:
    op.execute(f"CREATE TABLE event_counters_new ({COLUMNS}, CONSTRAINT event_counters_pkey PRIMARY KEY ({key})){rowid}")
    op.execute("INSERT INTO event_counters_new (list_name, address, event, count, last_at) "
               f"SELECT list_name, address, event, count, last_at FROM event_counters ORDER BY {key}")
    op.execute("DROP TABLE event_counters")
    op.execute("ALTER TABLE event_counters_new RENAME TO event_counters")


def _rekey_postgresql(key: list[str]) -> None:
    op.execute("ALTER TABLE event_counters DROP CONSTRAINT IF EXISTS event_counters_pkey")
    op.create_primary_key("event_counters_pkey", "event_counters", key)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite("list_name, event, address", " WITHOUT ROWID")
    else:
        _rekey_postgresql(["list_name", "event", "address"])
    op.create_index("ix_subscribers_receiving", "subscribers", ["list_name", "address", "state", "receives"])


def downgrade() -> None:
    op.drop_index("ix_subscribers_receiving", "subscribers")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite("list_name, address, event", "")
    else:
        _rekey_postgresql(["list_name", "address", "event"])
