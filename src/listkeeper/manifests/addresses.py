"""Address formats the engine derives from a list's address. Pure string work."""

from __future__ import annotations


def verp(bounce_address: str, recipient: str) -> str:
    """members-bounces@example.org + alice@example.net -> members-bounces+alice=example.net@example.org.

    A bounce to this address names the subscriber it was for, whatever the bounce says."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{recipient.replace('@', '=')}@{domain}"


def unverp(token: str) -> str | None:
    """alice=example.net -> alice@example.net (the last '=' separates the domain)."""
    local, sep, domain = token.rpartition("=")
    return f"{local}@{domain}" if sep and local and domain else None
