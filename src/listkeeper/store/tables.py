"""The store's tables (SQLAlchemy Core). Migrations in migrations/versions must match these."""

from __future__ import annotations

from sqlalchemy import (
    Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
)

metadata = MetaData()

# key/value facts about the store itself, e.g. the configuration generation
meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# the applied manifests, as kubectl keeps its last-applied configuration
resources = Table(
    "resources", metadata,
    Column("kind", String(64), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("spec", Text, nullable=False),  # canonical JSON, as in force now
    Column("hash", String(64), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("source", Text, nullable=False),  # file:line it was applied from
    Column("applied_at", Float, nullable=False),
    Column("last_applied", Text, nullable=True),  # the spec reconcile last wrote; differs from spec = drift
    Column("annotations", Text, nullable=False, server_default="{}"),
    Column("deleted_at", Float, nullable=True),  # soft-deleted: runtime data kept for the retention period
)

# every message we hold: what arrived (inbound) and what we send (post, notice)
messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # inbound | post | notice
    Column("state", String(16), nullable=False),  # accepted | held | queued | bounce ...
    Column("parent_id", Integer, ForeignKey("messages.id"), nullable=True),
    Column("list_name", String(253), nullable=True),
    Column("mail_from", Text, nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list of envelope recipients
    Column("reason", Text, nullable=True),  # why held / what rule decided
    Column("generation", Integer, nullable=False),  # configuration in force when accepted
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_messages_kind_state", messages.c.kind, messages.c.state)
Index("ix_messages_list", messages.c.list_name)

# one row per (outgoing message, recipient): the delivery queue
deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("return_path", Text, nullable=False),
    Column("state", String(16), nullable=False),  # see delivery/lifecycle.py
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("transport", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_deliveries_due", deliveries.c.state, deliveries.c.next_attempt_at)
Index("ix_deliveries_message", deliveries.c.message_id)

# addresses never sent to, added at run time (`listkeeper suppress add`, bounces)
suppressions = Table(
    "suppressions", metadata,
    Column("address", String(254), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("added_at", Float, nullable=False),
)

# a list's subscribers as rows, so events are evaluated with set-based SQL
subscribers = Table(
    "subscribers", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("address", String(254), primary_key=True),
    Column("source", String(16), nullable=False),  # manifest (later: mail, directory)
    Column("joined_at", Float, nullable=False),
)

# how often each event fired for each subscriber, and when last
event_counters = Table(
    "event_counters", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("address", String(254), primary_key=True),
    Column("event", String(63), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last_at", Float, nullable=False),
)

# every fire, with its time
event_fires = Table(
    "event_fires", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("list_name", String(253), nullable=False),
    Column("address", String(254), nullable=False),
    Column("event", String(63), nullable=False),
    Column("at", Float, nullable=False),
)
Index("ix_event_fires_list", event_fires.c.list_name, event_fires.c.event)
