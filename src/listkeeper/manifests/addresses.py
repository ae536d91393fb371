"""Address formats the engine derives from a list's address. Pure string work.

A VERP return path names the subscriber a copy was for and carries a tag that only this server can
make: `members-bounces+alice=example.net+TAG@example.org`. The recipient's local part may hold '+' and
'=' itself, its domain neither, so the last '=' ends the local part and a '+' after it starts the tag."""

from __future__ import annotations

import base64
import hashlib
import hmac

TAG_LENGTH = 8  # base32 characters of HMAC-SHA256: 40 bits, a forger's chance per try is 1 in 10^12


def verp(bounce_address: str, recipient: str) -> str:
    """members-bounces@example.org + alice@example.net -> members-bounces+alice=example.net@example.org.

    What the queue stores; delivery adds the tag (`sign_verp`) as the copy leaves."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{recipient.replace('@', '=')}@{domain}"


def verp_tag(key: bytes, bounce_address: str, recipient: str) -> str:
    """The tag proving this server made the return path of `bounce_address`'s copy to `recipient`."""
    message = f"{bounce_address.lower()}\n{recipient.lower()}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii")[:TAG_LENGTH].lower()


def sign_verp(key: bytes, bounce_address: str, recipient: str) -> str:
    """members-bounces+alice=example.net+TAG@example.org."""
    local, _, domain = bounce_address.rpartition("@")
    return (f"{local}+{recipient.replace('@', '=')}+{verp_tag(key, bounce_address, recipient)}@{domain}")


def parse_verp(token: str) -> tuple[str, str | None] | None:
    """alice=example.net+TAG -> (alice@example.net, TAG); alice=example.net -> (alice@example.net, None)."""
    local, sep, rest = token.rpartition("=")
    domain, plus, tag = rest.partition("+")
    if not (sep and local and domain) or (plus and not tag):
        return None
    return f"{local}@{domain}", tag if plus else None


def unverp(token: str) -> str | None:
    """alice=example.net[+TAG] -> alice@example.net."""
    parsed = parse_verp(token)
    return parsed[0] if parsed else None


def verp_signed_by(key: bytes, bounce_address: str, recipient: str, tag: str | None) -> bool:
    """In constant time; compared as UTF-8 bytes: an SMTPUTF8 address may carry any letters in its tag."""
    return tag is not None and hmac.compare_digest(tag.lower().encode(),
                                                   verp_tag(key, bounce_address, recipient).encode())


def split_verp(address: str, bounce_address: str) -> tuple[str, str | None] | None:
    """(recipient, tag) of a VERP form of `bounce_address`; None for any other address (the plain one too)."""
    local, _, domain = address.lower().rpartition("@")
    base, plus, token = local.partition("+")
    bounce_local, _, bounce_domain = bounce_address.lower().rpartition("@")
    if plus and base == bounce_local and domain == bounce_domain:
        return parse_verp(token)
    return None
