"""Barring rules, decided from the snapshot alone: who or what is refused before anything is stored."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from listkeeper.delivery.destinations import matches
from listkeeper.manifests.barring import BarringSpec


@dataclass(frozen=True)
class Barred:
    rule: str  # barring.sender | barring.domain | barring.size
    reason: str
    reply: str


def barred_sender(addresses: Iterable[str], rules: Iterable[BarringSpec]) -> Barred | None:
    for address in addresses:
        address = address.lower()
        if not address:
            continue
        domain = address.rpartition("@")[2]
        for rules_ in rules:
            for pattern in rules_.senders:
                if fnmatchcase(address, pattern.lower()):
                    return Barred("barring.sender", f"sender {address} matches {pattern}",
                                  f"550 5.7.1 {rules_.reply}")
            for pattern in rules_.domains:
                if matches(pattern, domain):
                    return Barred("barring.domain", f"sender domain {domain} matches {pattern}",
                                  f"550 5.7.1 {rules_.reply}")
    return None


def barred_size(size: int, rules: Iterable[BarringSpec]) -> Barred | None:
    limits = [r.max_size for r in rules if r.max_size]
    if limits and size > min(limits):
        return Barred("barring.size", f"{size} bytes is over the limit of {min(limits)}",
                      f"552 5.3.4 Message too big (limit {min(limits)} bytes)")
    return None
