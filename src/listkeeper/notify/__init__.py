"""Notifications on system events, and scheduled reports.

Anywhere in the engine: `notify.emit("message.barred", sender=..., ...)` announces an event now;
`notify.on_commit(conn, "bounce.disabled", ...)` announces it when `conn`'s transaction commits.
Neither blocks nor raises. The engine's dispatcher (dispatch.py) matches events against the
Notification manifests and runs their actions; reports.py builds and schedules the Report manifests."""

from .bus import SystemEvent, emit, on_commit

__all__ = ["SystemEvent", "emit", "on_commit"]
