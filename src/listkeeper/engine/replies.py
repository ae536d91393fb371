"""Replies the list writes itself, e.g. to LIST-request. Pure: they only build bytes."""

from __future__ import annotations

import textwrap
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from .headers import RawMessage
from .snapshot import ListConfig

QUIET_PRECEDENCE = {"bulk", "list", "junk"}


def may_answer(message: RawMessage, mail_from: str) -> bool:
    """Never answer a bounce, an auto-reply or list traffic: that is how mail loops start."""
    if not mail_from or mail_from.lower().startswith(("mailer-daemon@", "postmaster@")):
        return False
    auto = (message.get("auto-submitted") or "no").strip().lower()
    precedence = (message.get("precedence") or "").strip().lower()
    return auto == "no" and precedence not in QUIET_PRECEDENCE and message.get("list-id") is None


def request_reply(lst: ListConfig, message: RawMessage, sender: str, hostname: str, now: float) -> bytes:
    """What LIST-request answers until mail commands exist (issue 7), and always for a dynamic list."""
    spec = lst.spec
    if spec.members is not None:
        body = (f"The members of {spec.address} are chosen by the organisation's member directory each time a "
                f"message is posted, so nobody can subscribe or unsubscribe by mail.\n\n"
                f"To change whether you receive it, update your record in the member directory, or write to "
                f"{lst.address_for('owner')}.\n")
    else:
        body = (f"Commands by mail are not available for {spec.address} yet; nothing was changed.\n\n"
                f"To subscribe or unsubscribe, write to the list's owners at {lst.address_for('owner')}.\n")
    return command_reply(lst.address_for("request"), spec.address, message, sender, hostname, now, body)


def command_reply(from_address: str, loop_marker: str, message: RawMessage, sender: str, hostname: str,
                  now: float, body: str) -> bytes:
    """Every command gets a reply: this one, marked as automatic so it starts no loop."""
    reply = EmailMessage(policy=SMTP)
    reply["From"] = from_address
    reply["To"] = sender
    subject = message.get("subject") or ""
    reply["Subject"] = f"Re: {subject}" if subject else "Your request"
    reply["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    reply["Message-ID"] = f"<{uuid.uuid4().hex}@{hostname}>"
    if message.get("message-id"):
        reply["In-Reply-To"] = message.get("message-id")
    reply["Auto-Submitted"] = "auto-replied"
    reply["Precedence"] = "list"
    reply["X-Loop"] = loop_marker
    text = "\n\n".join(textwrap.fill(part, 72, break_on_hyphens=False, break_long_words=False)
                       for part in body.strip().split("\n\n")) + "\n"
    reply.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    return reply.as_bytes()
