"""Structured logs: each record of the engine's work names a stable event and carries its ids.

`note(log, "delivery.attempt", delivery_id=7, message_id=3, ...)` writes one record. In text format it
reads `delivery.attempt delivery_id=7 message_id=3 ...`; in JSON format (`serve --log-format json`) it
is one object per line with `event` and each field as a key, so a post can be followed by its ids:
`smtp.accepted` (queue_id) -> `post.queued` (queue_id, message_id) -> `delivery.attempt` (queue_id,
message_id; the engine's own mail, a digest or a report, has no queue_id and leaves the field out).
Records written during an SMTP session also carry the session's id (`session`), taken from a context
variable that the session's task and the threads it hands work to inherit.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# the SMTP session the current task (or a thread it started) works for; set by engine/smtp.py
session_id: ContextVar[str | None] = ContextVar("listkeeper_session", default=None)


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [str(v) for v in value]
        return ("; " if any(" " in item for item in items) else ",").join(items)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    # quoted when it has white space of any kind or a control character: a value (an SMTP login name, say)
    # must not end its field or its line
    return repr(text) if (not text or not text.isprintable() or any(c.isspace() for c in text)) else text


def note(logger: logging.Logger, event: str, /, *, level: int = logging.INFO, text: str = "",
         exc_info=None, **fields: Any) -> None:
    """One structured record. Fields that are None are left out; `text` is a human sentence after the fields."""
    if not logger.isEnabledFor(level):
        return
    fields = {k: v for k, v in fields.items() if v is not None}
    shown = " ".join(f"{k}={_shown(v)}" for k, v in fields.items())
    message = f"{event} {shown}".rstrip() + (f": {text}" if text else "")
    logger.log(level, "%s", message, exc_info=exc_info,
               extra={"event": event, "fields": fields, "text": text})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, the record's fields, and its session.

    Records not written with `note` (libraries, plain log calls) get `event: "log"` and their message."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
        }
        fields = getattr(record, "fields", None)
        if fields is None:
            out["message"] = record.getMessage()
        else:
            out.update((k, v) for k, v in fields.items() if k not in out)
            if getattr(record, "text", ""):
                out["message"] = record.text
        session = session_id.get()
        if session is not None and "session" not in out:
            out["session"] = session
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format, with the SMTP session's id added to records written during one."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        session = session_id.get()
        if session is not None and "session=" not in record.getMessage():
            first, newline, rest = line.partition("\n")
            line = f"{first} session={session}{newline}{rest}"
        return line


def configure(level: str = "info", fmt: str = "text", stream=None) -> None:
    """The root logger for `listkeeper serve`: one handler on stderr in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    for noisy in ("mail.log", "alembic", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
