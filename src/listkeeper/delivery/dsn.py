"""Delivery status notifications (RFC 3464): what went wrong, told to the sender in a form both a
person and a program can read, and a copy for the postmaster.

Pure: bytes in, bytes out. The scheduler decides when a report is due and injects what this makes.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.policy import SMTP, default
from email.utils import format_datetime, make_msgid

__all__ = ["Failure", "status_code", "should_report", "delivery_report", "postmaster_notice"]

# An RFC 3463 code stands alone: not part of an IP address or a version number.
ENHANCED = re.compile(r"(?<![\w.])([45])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
# A reply code opens the diagnostic or follows the "host:port: " that transports put before it, so
# numbers inside free text ("timed out after 450 s") are not taken for one.
REPLY = re.compile(r"(?:^|:\s+)([45])\d\d(?=[\s-]|$)")
EMPTY_LINE = re.compile(rb"\r?\n\r?\n")
WHERE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.-]*):\d{1,5}:\s+[45]\d\d(?:[\s-]|$)")
REPORT_TYPES = {"multipart/report", "message/delivery-status", "message/global-delivery-status",
                "message/disposition-notification", "message/global-disposition-notification"}
FIELD_LIMIT = 900  # a field with one long unbreakable word must still fit in 998 octets unfolded
WIDTH = 76


@dataclass(frozen=True)
class Failure:
    """One recipient given up on, with what the transport last said about it."""

    recipient: str
    diagnostic: str  # "mx.example.net:25: 550 5.1.1 User unknown", "expired after 5 days: 451 ..."
    remote_mta: str | None = None  # else taken from a "host:port: NNN" diagnostic when there is one
    expired: bool = False  # temporary failures past the message's lifetime, not a permanent refusal


def status_code(diagnostic: str, expired: bool = False) -> str:
    """The RFC 3463 status for a failure, so report readers can act on it without parsing prose.

    A failure with no code at all was either given up by us after retrying (4.4.7, "delivery time
    expired") or judged permanent when it happened (5.0.0).
    """
    if found := ENHANCED.search(diagnostic):
        return ".".join(found.groups())
    if found := REPLY.search(diagnostic):
        return f"{found.group(1)}.0.0"
    return "4.4.7" if expired else "5.0.0"


def should_report(envelope_from: str, original: bytes) -> bool:
    """Whether a failure of `original` may be reported to its sender (RFC 3464 section 2, RFC 3834).

    Never to the null sender or a MAILER-DAEMON, and never about a report: either would let two
    mail systems bounce reports at each other forever.
    """
    sender = _bare(envelope_from)
    if not sender or (sender.rpartition("@")[0] or sender).lower() == "mailer-daemon":
        return False
    message = message_from_bytes(original, policy=default)
    if message.get_content_type() == "multipart/report":
        return False
    submitted = str(message.get("Auto-Submitted", "no")).split(";")[0].strip().lower()
    if submitted not in ("", "no"):
        return not any(part.get_content_type() in REPORT_TYPES for part in message.walk())
    return True


def delivery_report(*, original: bytes, envelope_from: str, failures: list[Failure], reporting_host: str,
                    arrival: float, now: float) -> bytes:
    """The non-delivery report to the envelope sender: a multipart/report of RFC 6522 and 3464.

    Only the original's headers go back, never its body: enough to recognise the message, and a
    bounce cannot be used to reflect large or unwanted content at a forged sender.
    """
    sender = _bare(envelope_from)
    intro = (f"This is the mail system at {reporting_host}.\n\n"
             "Your message could not be delivered to one or more recipients, and no further attempts "
             "will be made. The reason for each recipient is given below; the headers of your message "
             "are attached.")
    return _report(to=sender, subject="Undelivered Mail Returned to Sender", intro=intro,
                   original=original, failures=failures, host=reporting_host, arrival=arrival, now=now,
                   auto_submitted="auto-replied")


def postmaster_notice(*, original: bytes, envelope_from: str, failures: list[Failure], reporting_host: str,
                      postmaster: str, now: float) -> bytes:
    """The postmaster's copy of a failure (as Postfix sends one): who sent what, and why it failed.

    It has the report's structure, so it too is recognised as a report and can never cause another.
    """
    sender = _bare(envelope_from) or "<>"
    intro = (f"This is the mail system at {reporting_host}.\n\n"
             f"A message from {sender} could not be delivered to one or more recipients. The reason "
             "for each recipient is given below; the headers of the message are attached.")
    return _report(to=_bare(postmaster), subject=f"Postmaster Copy: Undelivered Mail from {sender}",
                   intro=intro, original=original, failures=failures, host=reporting_host, arrival=None,
                   now=now, auto_submitted="auto-generated")


def _report(*, to: str, subject: str, intro: str, original: bytes, failures: list[Failure], host: str,
            arrival: float | None, now: float, auto_submitted: str) -> bytes:
    headers = _header_block(original)
    report = EmailMessage(policy=SMTP)
    report["From"] = Address("Mail Delivery System", "MAILER-DAEMON", host)
    report["To"] = to
    report["Subject"] = _field(subject)
    report["Date"] = _date(now)
    report["Message-ID"] = make_msgid("dsn", domain=host)  # random: two reports of one second differ
    report["Auto-Submitted"] = auto_submitted
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"
    report.attach(_explanation(intro, headers, failures))
    report.attach(_delivery_status(failures, host, arrival, now))
    report.attach(_text_part(headers.decode("utf-8", "replace"), "rfc822-headers"))
    return report.as_bytes(policy=SMTP)


def _explanation(intro: str, headers: bytes, failures: list[Failure]) -> MIMEPart:
    original = message_from_bytes(headers + b"\r\n", policy=default)
    lines = [textwrap.fill(paragraph, WIDTH) for paragraph in intro.split("\n\n")]
    if subject := original.get("Subject"):
        lines.append(textwrap.fill(f"Subject of the message: {subject}", WIDTH, subsequent_indent="    "))
    for failure in failures:
        reason = ("gave up after repeated temporary failures" if failure.expired else "refused")
        lines.append(f"<{_bare(failure.recipient)}>: {reason}\n"
                     + textwrap.fill(" ".join(failure.diagnostic.split()), WIDTH, initial_indent="    ",
                                     subsequent_indent="    ", break_on_hyphens=False))
    return _text_part("\n\n".join(lines) + "\n", "plain")


def _delivery_status(failures: list[Failure], host: str, arrival: float | None, now: float) -> MIMEPart:
    """One per-message block, then one block per recipient, as the parser hands them back."""
    blocks = [_block([("Reporting-MTA", f"dns; {host}")]
                     + ([("Arrival-Date", _date(arrival))] if arrival is not None else []))]
    for failure in failures:
        recipient = _bare(failure.recipient)
        fields = [("Final-Recipient", f"{'rfc822' if recipient.isascii() else 'utf-8'}; {_xtext(recipient)}"),
                  ("Action", "failed"),
                  ("Status", status_code(failure.diagnostic, failure.expired))]
        if remote := _remote_mta(failure):
            fields.append(("Remote-MTA", f"dns; {remote}"))
        fields += [("Diagnostic-Code", _diagnostic_code(failure.diagnostic)), ("Last-Attempt-Date", _date(now))]
        blocks.append(_block(fields))
    part = MIMEPart(policy=SMTP)
    part["Content-Type"] = "message/delivery-status"
    part.set_payload(blocks)
    return part


def _block(fields: list[tuple[str, str]]) -> Message:
    block = Message(policy=SMTP)
    for name, value in fields:
        block[name] = _field(value)
    return block


def _diagnostic_code(diagnostic: str) -> str:
    """An SMTP reply as RFC 3464 wants it, without the host that said it (that is Remote-MTA).

    A failure that never got a reply (no route, refused connection) is our own words, not SMTP's.
    """
    if found := REPLY.search(diagnostic):
        return f"smtp; {diagnostic[found.start(1):]}"
    return f"X-Listkeeper; {diagnostic}"


def _remote_mta(failure: Failure) -> str | None:
    if failure.remote_mta:
        return failure.remote_mta
    found = WHERE.match(failure.diagnostic)
    return found.group(1) if found else None


def _header_block(original: bytes) -> bytes:
    """The original's header section: everything before the first empty line."""
    if original.startswith((b"\r\n", b"\n")):
        return b""
    end = EMPTY_LINE.search(original)
    return original[:end.start()] if end else original.rstrip(b"\r\n")


def _text_part(text: str, subtype: str) -> MIMEPart:
    """Seven-bit whenever the text allows, so the report needs nothing of the server it goes to."""
    part = MIMEPart(policy=SMTP)
    plain = text.isascii() and all(len(line) <= 998 for line in text.splitlines())
    part.set_content(text, subtype=subtype, cte="7bit" if plain else "quoted-printable")
    return part


def _field(value: str) -> str:
    """One line of printable ASCII short enough to fit within 998 octets even if it cannot fold."""
    value = _xtext(" ".join(value.split()))
    return value if len(value) <= FIELD_LIMIT else value[:FIELD_LIMIT - 3] + "..."


def _xtext(text: str) -> str:
    """Non-ASCII as RFC 6533's \\x{HEX}, since delivery-status fields are ASCII."""
    return "".join(c if " " <= c <= "~" else f"\\x{{{ord(c):X}}}" for c in text)


def _bare(address: str) -> str:
    return address.strip().strip("<>").strip()


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, timezone.utc))
