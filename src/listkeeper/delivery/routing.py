"""Recipient domain -> route. Ordered, first match wins."""

from __future__ import annotations

from collections.abc import Sequence

from listkeeper.manifests.routes import Route


def matches(pattern: str, domain: str) -> bool:
    pattern, domain = pattern.lower(), domain.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


def route_for(recipient: str, routes: Sequence[Route]) -> Route | None:
    domain = recipient.rpartition("@")[2]
    return next((route for route in routes if matches(route.match, domain)), None)
