"""The tag on VERP return paths, added as a copy leaves.

The queue stores each list copy's return path unsigned (`members-bounces+alice=example.net@...`): template
mails write theirs in SQL, which has no portable HMAC. A claimed delivery gets its tag here, before its
copy is made, so MAIL FROM, the Return-Path of a pickup file, the DKIM signing domain and our own delivery
report all use the signed address: one place signs, with the key every node reads from the store."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.engine import Connection

from listkeeper.manifests.addresses import parse_verp, sign_verp
from listkeeper.store.queue import Due
from listkeeper.store.signing import verp_key


def signed(conn: Connection, claimed: list[Due]) -> list[Due]:
    """The claimed deliveries, each whose return path is the VERP of its own recipient carrying the tag."""
    bounce_addresses = [_unsigned_verp_of(due) for due in claimed]
    if not any(bounce_addresses):
        return claimed
    key = verp_key(conn)
    return [due if bounce_address is None else replace(
                due, return_path=sign_verp(key, bounce_address, due.recipient.lower()))
            for due, bounce_address in zip(claimed, bounce_addresses)]


def _unsigned_verp_of(due: Due) -> str | None:
    """LIST-bounces@DOMAIN when the return path is its untagged VERP form for this very recipient."""
    local, at, domain = due.return_path.rpartition("@")
    base, plus, token = local.partition("+")
    if not (at and plus and base.lower().endswith("-bounces")):
        return None
    parsed = parse_verp(token)
    if parsed is None or parsed[1] is not None or parsed[0].lower() != due.recipient.lower():
        return None
    return f"{base}@{domain}".lower()
