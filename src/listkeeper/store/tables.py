"""The store's tables (SQLAlchemy Core). Migrations in migrations/versions must match these."""

from __future__ import annotations

from sqlalchemy import (
    Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, PrimaryKeyConstraint, String, Table, Text,
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
    # configuration in force when accepted: inbound, the SMTP session's snapshot; a post, the store's
    # generation its recipients were read at (one later than the session's if a reload came between)
    Column("generation", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_messages_kind_state", messages.c.kind, messages.c.state)
Index("ix_messages_list", messages.c.list_name)
Index("ix_messages_parent", messages.c.parent_id)  # a message removed is looked for among those made from it

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
    Column("claimed_by", String(253), nullable=True),  # the engine node holding the lease (serve --node)
    Column("transport", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_deliveries_due", deliveries.c.state, deliveries.c.next_attempt_at)
Index("ix_deliveries_message", deliveries.c.message_id)
# PostgreSQL: what a claim reads, in the order it takes it: a claim of 500 of 100,000 due deliveries
# stops after 500 rows instead of sorting them all (every node claims this way, many times a second).
# SQLite (one node) does better without the cost of keeping it.
Index("ix_deliveries_claimable", deliveries.c.next_attempt_at, deliveries.c.id,
      postgresql_where=deliveries.c.state.in_(("queued", "deferred"))).ddl_if(dialect="postgresql")
POSTGRESQL_ONLY_INDEXES = frozenset({"ix_deliveries_claimable"})  # (Alembic's comparison ignores ddl_if)

# addresses never sent to, added at run time (`listkeeper suppress add`, bounces)
suppressions = Table(
    "suppressions", metadata,
    Column("address", String(254), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("added_at", Float, nullable=False),
)

# a list's subscribers: runtime data the engine owns (manifest rows are synced on apply)
subscribers = Table(
    "subscribers", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("address", String(254), primary_key=True),
    Column("source", String(16), nullable=False),  # manifest | mail | web | import | cli
    Column("joined_at", Float, nullable=False),
    Column("name", Text, nullable=True),
    Column("roles", String(100), nullable=False, server_default="regular"),  # sorted, comma-separated
    Column("receives", String(8), nullable=False, server_default="post"),  # post | digest | '' (nothing)
    Column("state", String(16), nullable=False, server_default="active"),  # active | unsubscribed | disabled
    Column("bounce_score", Float, nullable=False, server_default="0"),
    Column("bounce_last_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False, server_default="0"),
)
Index("ix_subscribers_receives", subscribers.c.list_name, subscribers.c.receives, subscribers.c.state)
# who receives a list, in address order, without reading the rows: list events merge it with counters
Index("ix_subscribers_receiving", subscribers.c.list_name, subscribers.c.address, subscribers.c.state,
      subscribers.c.receives)

# every subscription change, for the subscriptions report
subscription_changes = Table(
    "subscription_changes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("list_name", String(253), nullable=False),
    Column("address", String(254), nullable=False),
    Column("action", String(16), nullable=False),  # join | leave | digest_on | digest_off | disabled | roles
    Column("source", String(16), nullable=False),  # manifest | mail | web | import | bounce | cli
    Column("detail", Text, nullable=True),
    Column("at", Float, nullable=False),
)
Index("ix_subscription_changes_at", subscription_changes.c.at)

# pending confirmations of subscribe / unsubscribe by mail (LIST-confirm+TOKEN@)
confirmations = Table(
    "confirmations", metadata,
    Column("token", String(64), primary_key=True),
    Column("list_name", String(253), nullable=False),
    Column("address", String(254), nullable=False),
    Column("action", String(16), nullable=False),  # subscribe | unsubscribe
    Column("detail", Text, nullable=True),  # JSON: e.g. {"digest": true, "name": ...}
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

# posts held for moderation, with the token moderators answer with
holds = Table(
    "holds", metadata,
    Column("token", String(64), primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
    Column("list_name", String(253), nullable=False),
    Column("sender", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("decided_at", Float, nullable=True),
    Column("decision", String(16), nullable=True),  # approved | rejected | discarded | expired
    Column("decided_by", Text, nullable=True),
)
Index("ix_holds_list", holds.c.list_name, holds.c.decided_at)

# automatic replies sent per address per day (a limit stops backscatter and reply loops)
autoresponses = Table(
    "autoresponses", metadata,
    Column("address", String(254), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("count", Integer, nullable=False),
)

# every bounce attributed to a subscriber, and whether it counted towards the score
bounces = Table(
    "bounces", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("list_name", String(253), nullable=False),
    Column("address", String(254), nullable=False),
    Column("kind", String(8), nullable=False),  # hard | soft
    Column("counted", Integer, nullable=False),
    Column("message_id", Integer, nullable=True),
    Column("detail", Text, nullable=True),
    Column("at", Float, nullable=False),
)
Index("ix_bounces_list", bounces.c.list_name, bounces.c.address)

# accepted posts not yet sent to the list's digest members
digest_pending = Table(
    "digest_pending", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id"), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("added_at", Float, nullable=False),
)

# inbound mail refused at SMTP time, with the rule and reason (the barring report)
refusals = Table(
    "refusals", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("peer", Text, nullable=True),
    Column("mail_from", Text, nullable=False),
    Column("recipients", Text, nullable=False),
    Column("rule", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("reply", Text, nullable=False),
)
Index("ix_refusals_at", refusals.c.at)

# how often each event fired for each subscriber, and when last. Keyed event first: a tick reads one
# event's counters as an address-ordered range, and the fires of one event land side by side; on
# SQLite the key is the table (WITHOUT ROWID), so a counter is one b-tree entry
event_counters = Table(
    "event_counters", metadata,
    Column("list_name", String(253), nullable=False),
    Column("address", String(254), nullable=False),
    Column("event", String(63), nullable=False),
    Column("count", Integer, nullable=False),
    Column("last_at", Float, nullable=False),
    PrimaryKeyConstraint("list_name", "event", "address", name="event_counters_pkey"),
    sqlite_with_rowid=False,
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
Index("ix_event_fires_at", event_fires.c.at)  # the events report reads a period

# every digest sent: its list, number and size; the newest row numbers the next one
digests = Table(
    "digests", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("volume", Integer, primary_key=True),
    Column("issue", Integer, primary_key=True),
    Column("period", String(10), nullable=False),  # the volume's period when sent: 2026, 2026-11, 2026-W48
    Column("posts", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("trigger", String(16), nullable=False),  # schedule | size | hand
    Column("sent_at", Float, nullable=False),
)
Index("ix_digests_sent", digests.c.list_name, digests.c.sent_at)

# accepted posts not yet written to the list's archive
archive_pending = Table(
    "archive_pending", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id"), primary_key=True),
    Column("added_at", Float, nullable=False),
)

# per list: how many posts were archived, and an mbox archive's length after the last recorded write
archives = Table(
    "archives", metadata,
    Column("list_name", String(253), primary_key=True),
    Column("archived", Integer, nullable=False),
    Column("mbox_size", Integer, nullable=True),
    Column("updated_at", Float, nullable=False),
)

# each Report's last run: the next one covers the time since
report_runs = Table(
    "report_runs", metadata,
    Column("name", String(253), primary_key=True),
    Column("last_run_at", Float, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("trigger", String(16), nullable=False),  # start (first seen: nothing sent) | schedule | hand
)

# every change of the configuration: applied (a reconcile, from the CLI or an engine's reload) or
# rejected (a reload whose manifests did not validate); `listkeeper status` reads the last of each
config_history = Table(
    "config_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("outcome", String(16), nullable=False),  # applied | rejected
    Column("generation", Integer, nullable=False),  # applied: the new one; rejected: the one kept
    Column("origin", Text, nullable=False),  # the engine node, or 'reconcile' (the CLI)
    Column("trigger", String(32), nullable=False),  # start | watch | sighup | cli | plan
    Column("paths", Text, nullable=False),  # JSON: the folders and files read
    Column("files", Text, nullable=False),  # JSON: the files the changed resources came from
    Column("changes", Text, nullable=False),  # JSON: ["update MailingList/x", ...]
    Column("errors", Text, nullable=False),  # JSON: ["path:line:column: field: message", ...]
)
Index("ix_config_history_outcome", config_history.c.outcome, config_history.c.id)

# the engines serving from this store: the generation each runs (several nodes see each other here)
engine_nodes = Table(
    "engine_nodes", metadata,
    Column("node", String(253), primary_key=True),  # host:smtp-port unless named
    Column("generation", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("loaded_at", Float, nullable=False),  # when it swapped to `generation`
    Column("seen_at", Float, nullable=False),  # heartbeat
    Column("stopped_at", Float, nullable=True),
    Column("listening", Text, nullable=False),  # smtp://host:port
)

# system events committed by a process with no engine attached (a command run by hand): the leading
# engine reads them, offers them to its Notifications, and deletes them in the same transaction
notify_outbox = Table(
    "notify_outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False),  # the event's id: the same if it is offered again
    Column("type", String(64), nullable=False),
    Column("attributes", Text, nullable=False),  # JSON object, as SystemEvent.as_json gives it
    Column("at", Float, nullable=False),  # when it happened, not when it was drained
)

# max_frequency's windows, shared by the engine nodes and kept across restarts: one row per Notification
# and key (a hash of its `per` attributes' values); admitting an event claims an expired window
notify_windows = Table(
    "notify_windows", metadata,
    Column("rule", String(253), nullable=False),  # the Notification's name
    Column("key", String(64), nullable=False),  # sha256 of the `per` attributes and their values
    Column("opened_at", Float, nullable=False),  # the event that ran the actions and opened the window
    Column("every", Float, nullable=False),  # its length when opened (housekeeping forgets closed ones)
    Column("held_back", Integer, nullable=False),  # events since, not run: the next run carries them
    Column("count", Integer, nullable=False),  # the events that run stood for
    Column("since", Float, nullable=True),  # the run before it; None: none known
    PrimaryKeyConstraint("rule", "key", name="notify_windows_pkey"),
)
