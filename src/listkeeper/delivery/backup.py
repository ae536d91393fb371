"""File backup of every sent message under a path template; no value can leave the folder."""

from __future__ import annotations

import os
import re
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path

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
