"""Replies the list writes itself, e.g. to LIST-request. Pure: they only build bytes."""

from __future__ import annotations

import re
import textwrap
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from .headers import RawMessage

QUIET_PRECEDENCE = {"bulk", "list", "junk", "auto_reply"}
# Return paths of list software and mail systems (RFC 3834 section 2, as vacation(1) skips them)
LIST_SENDERS = re.compile(r"^(owner-.*|.*-(request|owner|bounces|admin)(\+.*)?|mailer-daemon|postmaster|"
                          r"listserv|majordomo|mailman|noreply|no-reply)$", re.IGNORECASE)


def automated_reason(message: RawMessage, mail_from: str) -> str:
    """Why a message is a bounce or an auto-reply (RFC 3834 and common practice), or ''."""
    if not mail_from:
        return "a bounce (null envelope sender)"
    if mail_from.lower().startswith(("mailer-daemon@", "postmaster@")):
        return f"a bounce (envelope sender {mail_from})"
    auto = (message.get("auto-submitted") or "no").strip().lower()
    if not auto.startswith("no"):
        return f"an automatic message (Auto-Submitted: {auto})"
    if message.get("x-autoreply") is not None or message.get("x-autorespond") is not None:
        return "an auto-reply (X-Autoreply)"
    if (message.get("precedence") or "").strip().lower() == "auto_reply":
        return "an auto-reply (Precedence: auto_reply)"
    return ""


def may_answer(message: RawMessage, mail_from: str) -> bool:
    """Never answer a bounce, an automatic message (RFC 3834), list traffic or list software: that is
    how mail loops start."""
    if automated_reason(message, mail_from) or LIST_SENDERS.match(mail_from.rpartition("@")[0]):
        return False
    precedence = (message.get("precedence") or "").strip().lower()
    return precedence not in QUIET_PRECEDENCE and message.get("list-id") is None


def _wrapped(body: str) -> str:
    def fill(line: str) -> str:
        if line.startswith(("  ", "> ")):
            return line
        return textwrap.fill(line, 72, break_on_hyphens=False, break_long_words=False)
    return "\n\n".join("\n".join(fill(line) for line in part.split("\n"))
                       for part in body.strip().split("\n\n")) + "\n"


def notice(from_address: str, to: str, subject: str, body: str, hostname: str, now: float, *,
           reply_to: str | None = None, loop_marker: str | None = None, auto: str = "auto-generated",
           in_reply_to: str | None = None) -> EmailMessage:
    """A message the engine writes itself: dated, with our Message-ID, marked automatic (RFC 3834)."""
    mail = EmailMessage(policy=SMTP)
    mail["From"] = from_address
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@{hostname}>"
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
        mail["References"] = in_reply_to
    if reply_to:
        mail["Reply-To"] = reply_to
    mail["Auto-Submitted"] = auto
    mail["Precedence"] = "list"
    if loop_marker:
        mail["X-Loop"] = loop_marker
    text = _wrapped(body)
    mail.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    return mail


def command_reply(from_address: str, loop_marker: str, message: RawMessage, sender: str, hostname: str,
                  now: float, body: str, reply_to: str | None = None) -> bytes:
    """Every command gets a reply: this one, marked as automatic so it starts no loop."""
    subject = message.get("subject") or ""
    return notice(from_address, sender, f"Re: {subject}" if subject else "Your request", body, hostname, now,
                  reply_to=reply_to, loop_marker=loop_marker, auto="auto-replied",
                  in_reply_to=message.get("message-id")).as_bytes()
