"""`listkeeper status`: what the engines run, read from the store (status is a process of its own):
the configuration generation and how it was applied, the engine nodes, the last refused reload, the queue,
the notification outbox."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from sqlalchemy.engine import Connection

from listkeeper.store import config as applied_config
from listkeeper.store import config_history
from listkeeper.store import outbox as store_outbox
from listkeeper.store import queue as store_queue
from listkeeper.store.config_history import ConfigChange
from listkeeper.store.nodes import Node, leader, listing

SILENT_AFTER = 60.0  # seconds without a heartbeat (engines beat every 15 s) before a node is called silent
UNDRAINED_AFTER = 60.0  # seconds an event waits in the outbox (drained every 2 s) before no engine seems to drain it
SHOWN = 20  # files, changes and errors listed before "... and N more"


@dataclass(frozen=True)
class Outbox:
    """System events of commands run by hand, waiting for the leading engine to announce them."""
    waiting: int = 0
    oldest: float | None = None  # when the oldest waiting event happened


@dataclass(frozen=True)
class Status:
    at: float
    generation: int  # the store's
    applied: ConfigChange | None  # how that generation was applied, if recorded
    rejected: ConfigChange | None  # the last reload refused
    nodes: tuple[Node, ...]
    deliveries: Mapping[str, int]  # by state
    held: int  # posts held for moderation
    leader: str | None = None  # PostgreSQL: the node running the periodic work now
    outbox: Outbox = Outbox()

    def json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def read_status(conn: Connection, now: float) -> Status:
    generation = applied_config.generation(conn)
    return Status(now, generation, config_history.applied(conn, generation), config_history.last(conn, "rejected"),
                  tuple(listing(conn)), store_queue.queue_counts(conn),
                  sum(store_queue.held_counts(conn).values()), leader(conn), Outbox(*store_outbox.backlog(conn)))


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def _some(items: tuple[str, ...], indent: str) -> list[str]:
    lines = [f"{indent}{item}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        lines.append(f"{indent}… and {len(items) - SHOWN} more")
    return lines


def _by(change: ConfigChange) -> str:
    o = change.origin
    paths = f" from {', '.join(o.paths)}" if o.paths else ""
    return f"{_utc(change.at)} by {o.origin} ({o.trigger}){paths}"


def _node_state(node: Node, now: float, generation: int) -> str:
    if node.stopped_at is not None:
        return f"stopped {_ago(now - node.stopped_at)}"
    if now - node.seen_at > SILENT_AFTER:
        return f"silent since {_ago(now - node.seen_at)}"
    return "running" if node.generation == generation else "running, reloading"


def status_view(status: Status):
    """The status as text lines and two tables (engines, queue); `terminal.show` prints it."""
    from listkeeper import terminal
    from listkeeper.terminal import Column
    lines: list = [f"Configuration: generation {status.generation}"]
    applied = status.applied
    if applied is not None:
        lines.append(f"  applied {_by(applied)}")
        if applied.files:
            lines.append("  from files:")
            lines += _some(applied.files, "    ")
        lines.append("  changes:" if applied.changes else "  changes: none (expired deletions purged)")
        lines += _some(applied.changes, "    ")
    elif status.generation:
        lines.append("  (applied before this store kept a history)")
    lines.append("")
    if status.nodes:
        lines.append("Engines:")
        lines.append(terminal.table(
            [Column("node"), Column("generation", "right"), Column("loaded"), Column("listening"), Column("state")],
            [(n.node, n.generation, _utc(n.loaded_at), n.listening, _node_state(n, status.at, status.generation))
             for n in status.nodes], indent=2))
        if status.leader:
            lines.append(f"  leader (list events, digests, reports): {status.leader}")
    else:
        lines.append("Engines: none has run on this store.")
    lines.append("")
    rejected = status.rejected
    if rejected is None:
        lines.append("Last rejected reload: none.")
    else:
        lines.append(f"Last rejected reload: {_by(rejected)}; kept generation {rejected.generation}; "
                     f"{len(rejected.errors)} error(s):")
        lines += _some(rejected.errors, "  ")
        if applied is not None and applied.at > rejected.at:
            lines.append(f"  (since then, generation {status.generation} was applied)")
    lines.append("")
    lines.append("Queue:")
    queue = sorted(status.deliveries.items()) or [("(empty)", 0)]
    lines.append(terminal.table([Column("state"), Column("deliveries", "right")],
                                [*queue, ("held posts", status.held)], indent=2))
    lines.append("")
    lines += _outbox_lines(status)
    return terminal.lines(*lines)


def _outbox_lines(status: Status) -> list[str]:
    box = status.outbox
    if not box.waiting or box.oldest is None:
        return ["Notification outbox: empty."]
    lines = [f"Notification outbox: {box.waiting} event(s) waiting, oldest {_utc(box.oldest)} "
             f"({_ago(status.at - box.oldest)})."]
    if status.at - box.oldest > UNDRAINED_AFTER:
        ask = (f"Is the leader, {status.leader}, stuck?" if status.leader else
               "Is `listkeeper serve` running on this store (on PostgreSQL: is there a leader)?")
        lines.append(f"  waiting for more than a minute: no engine seems to be draining them (the leading engine "
                     f"does every 2 s). {ask}")
    return lines


def render_status(status: Status) -> str:
    """The status as plain text (what `listkeeper status` prints into a pipe)."""
    from listkeeper import terminal
    return terminal.plain(status_view(status))
