"""The poster's DKIM signatures: kept on a list's copy only while they still verify.

A signature covers the fields its h= tag names and the body. When the list changes one of those
fields (a subject prefix, a rewritten From, List-* fields the poster signed as absent) or the body,
the signature can only fail, so it is dropped; one that still verifies is kept, and with it the
poster's DMARC alignment.
"""

from __future__ import annotations

import re

from dkim.util import InvalidTagValueList, parse_tag_value

from .headers import RawMessage

_SPACE = re.compile(rb"\s+")


def signed_fields(raw_field: bytes) -> frozenset[str] | None:
    """The lower-case field names a DKIM-Signature field's h= tag covers; None when it is unreadable."""
    value = raw_field.split(b":", 1)[1] if b":" in raw_field else b""
    try:
        tags = parse_tag_value(_SPACE.sub(b" ", value).strip())
    except (InvalidTagValueList, ValueError):
        return None
    names = tags.get(b"h")
    if not names:
        return None
    return frozenset(n.strip().lower().decode("ascii", "replace") for n in names.split(b":") if n.strip())


def _values(message: RawMessage, name: str) -> tuple[bytes, ...]:
    """A field's occurrences as relaxed canonicalisation sees them (RFC 6376 3.4.2)."""
    return tuple(_SPACE.sub(b" ", raw.split(b":", 1)[1] if b":" in raw else b"").strip()
                 for field, raw in message.fields if field == name)


def keep_valid_signatures(before: RawMessage, after: RawMessage,
                          changed_later: frozenset[str] = frozenset()) -> RawMessage:
    """`after` without those DKIM-Signature fields that the changes from `before` (or the fields in
    `changed_later`, which delivery sets per recipient) have broken."""
    if not any(name == "dkim-signature" for name, _ in after.fields):
        return after
    body_same = before.body == after.body
    kept = []
    for name, raw in after.fields:
        if name == "dkim-signature":
            covered = signed_fields(raw)
            if (covered is None or not body_same or covered & changed_later
                    or any(_values(before, n) != _values(after, n) for n in covered)):
                continue
        kept.append((name, raw))
    return RawMessage(tuple(kept), after.separator, after.body, after.eol)
