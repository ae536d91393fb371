"""Reading a bounce: which addresses failed, and whether for good (hard) or for now (soft). Pure.

Standard reports come first: the per-recipient blocks of an RFC 3464 `message/delivery-status` part, or
its RFC 6533 `message/global-delivery-status` form (which flufl.bounce does not read), give each failed
address with its Action, Status and Diagnostic-Code. `Action: failed` is hard and `Action: delayed` is
soft, whatever the status code says: an MTA that gives up on a 4.x.x failure after days of retrying has
still given up. Everything else (qmail, Exim and Sendmail plain text, older Exchange, ...) goes to
flufl.bounce's detectors: its permanent set is hard, its temporary set (warnings) soft.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.utils import parseaddr

from flufl.bounce import all_failures

log = logging.getLogger("listkeeper.bounces")

HARD, SOFT = "hard", "soft"
STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_BLOCKS = re.compile(r"\r?\n[ \t]*\r?\n")
_CODE = re.compile(r"\b([45]\d\d)(?:[ -]+([45]\.\d{1,3}\.\d{1,3}))?\b")
DETAIL_LIMIT = 300


@dataclass(frozen=True)
class Failure:
    """One address the report says failed."""

    address: str
    kind: str  # hard | soft
    detail: str  # "5.1.1 smtp; 550 5.1.1 User unknown", or what flufl.bounce found


def read(data: bytes) -> tuple[Failure, ...]:
    """Every failed address in the bounce, each once (a hard failure wins over a soft one)."""
    message = message_from_bytes(data)
    found = _from_status_parts(message)
    if not found:
        found = _from_flufl(message)
    worst: dict[str, Failure] = {}
    for failure in found:
        if failure.address not in worst or (failure.kind == HARD and worst[failure.address].kind == SOFT):
            worst[failure.address] = failure
    return tuple(worst.values())


def is_report(data: bytes) -> bool:
    """A multipart/report (a DSN or similar), whatever it says."""
    return message_from_bytes(data).get_content_type() == "multipart/report"


def is_auto_reply(data: bytes) -> bool:
    """An out-of-office or other automatic answer (RFC 3834 and common practice), not a report."""
    message = message_from_bytes(data)
    if message.get_content_type() == "multipart/report":
        return False
    auto = str(message.get("auto-submitted", "no")).split(";")[0].strip().lower()
    return (auto == "auto-replied" or message.get("x-autoreply") is not None
            or message.get("x-autorespond") is not None
            or str(message.get("precedence", "")).strip().lower() == "auto_reply")


def _from_status_parts(message: Message) -> list[Failure]:
    found: list[Failure] = []
    for part in message.walk():
        if part.get_content_type() not in STATUS_TYPES:
            continue
        for block in _status_blocks(part):
            failure = _failure(block)
            if failure is not None:
                found.append(failure)
    return found


def _status_blocks(part: Message) -> list[Message]:
    """The part's field blocks. The email package splits a delivery-status into blocks itself, but
    takes a global-delivery-status for an enclosed message: rejoin, then split on the empty lines."""
    payload = part.get_payload()
    if isinstance(payload, list):
        text = "\n\n".join(block.as_string() for block in payload if isinstance(block, Message))
    elif isinstance(payload, str):
        text = payload
    else:
        return []
    parser = HeaderParser()
    return [parser.parsestr(chunk.strip() + "\n") for chunk in _BLOCKS.split(text) if chunk.strip()]


def _failure(block: Message) -> Failure | None:
    action = str(block.get("action", "")).strip().lower()
    if action.startswith(("failed", "error")):  # OpenSMTPD writes the non-standard 'error'
        kind = HARD
    elif action.startswith("delayed"):
        kind = SOFT
    else:  # delivered, relayed, expanded: not a failure; or a per-message block
        return None
    address = ""
    for name in ("original-recipient", "final-recipient"):  # the address we sent to, when it is given
        value = " ".join(str(block.get(name, "")).split())
        _, _, typed = value.partition(";")
        candidate = parseaddr((typed or value).strip())[1].lower()
        if "@" in candidate:
            address = candidate
            break
    if not address:
        return None
    status = " ".join(str(block.get("status", "")).split())
    diagnostic = " ".join(str(block.get("diagnostic-code", "")).split())
    return Failure(address, kind, _clip(" ".join(filter(None, (status, diagnostic))) or f"Action: {action}"))


def _from_flufl(message: Message) -> list[Failure]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector choking on an odd message must not stop the rest
        log.exception("flufl.bounce could not read a bounce")
        return []
    text = _text_of(message)
    found = []
    for kind, addresses in ((HARD, permanent), (SOFT, temporary)):
        for raw in sorted(addresses):
            address = raw.decode("ascii", "replace").strip().lower() if isinstance(raw, bytes) else str(raw).lower()
            if "@" in address:
                found.append(Failure(address, kind, _near(text, address, kind)))
    return found


def _text_of(message: Message) -> str:
    """The text the report's reader sees: its first text/plain part (or the whole body when single)."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True) or b""
            return payload.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def _near(text: str, address: str, kind: str) -> str:
    """The SMTP reply given for the address, when the text has one after it; else what flufl said."""
    where = text.lower().find(address)
    found = _CODE.search(text, where, where + 600) if where >= 0 else None
    if found:
        return _clip(" ".join(filter(None, (found.group(1), found.group(2)))) + " (flufl.bounce)")
    return f"{'permanent' if kind == HARD else 'temporary'} failure (flufl.bounce)"


def _clip(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[:DETAIL_LIMIT - 3] + "..."
