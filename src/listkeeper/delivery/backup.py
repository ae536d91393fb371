"""File backup of every sent message under a path template; no value can leave the folder."""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path

log = logging.getLogger("listkeeper.delivery")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]+")


def clean(value: str, limit: int = 80) -> str:
    """One path segment: no separators, control characters, dots-only names or unbounded length."""
    value = re.sub(r"_+", "_", re.sub(r"\.{2,}", "_", _UNSAFE.sub("_", value))).strip("._")[:limit]
    return value or "_"


def backup_path(template: str, *, list_name: str, recipient: str, subject: str, date: str,
                message_id: str) -> Path:
    rendered = template.format(list=clean(list_name), recipient=clean(recipient), subject=clean(subject),
                               date=clean(date), message_id=clean(message_id.strip("<>")))
    parts = [p for p in rendered.split("/") if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path("_")


def headers_of(data: bytes) -> tuple[str, str]:
    """(subject, message id) of a message, for the placeholders."""
    headers = BytesHeaderParser(policy=default).parsebytes(data)
    return str(headers.get("subject", "") or ""), str(headers.get("message-id", "") or "")


def write_backup(folder: Path, relative: Path, data: bytes) -> Path:
    target = folder / relative
    if folder.resolve() not in target.resolve().parents:
        raise ValueError(f"backup path {relative} leaves {folder}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def write_copies(store, now: float, backups, settings) -> None:
    """A copy of each sent message (delivery, its bytes) under the backup folder. Blocking: run in a
    thread. A store error reading the list names is raised (the caller keeps the copies for its next
    write); a copy that cannot be written is logged and never costs a delivery its outcome."""
    from listkeeper.store import queue as store_queue
    with store.engine.connect() as conn:
        names = store_queue.list_names(conn, (d.message_id for d, _ in backups))
    date = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
    headers: dict[int, tuple[str, str]] = {}
    for due, data in backups:
        try:  # a poster's odd headers must never cost a delivery its outcome
            if due.message_id not in headers:
                headers[due.message_id] = headers_of(data)
            subject, message_id = headers[due.message_id]
            path = backup_path(settings.path, list_name=names.get(due.message_id, ""), recipient=due.recipient,
                               subject=subject, date=date, message_id=message_id or str(due.message_id))
            write_backup(Path(settings.folder), path, data)
        except Exception:  # noqa: BLE001
            log.exception("backup of delivery %d failed", due.delivery_id)
