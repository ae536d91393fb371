"""Recipient -> destination: where the scheduler queues it and whose limits apply. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from listkeeper.manifests.routes import DiscardRoute, MxRoute, PickupRoute, RelayRoute, matches, route_for


@dataclass(frozen=True)
class Destination:
    """`key` names one queue with its own concurrency: a relay, an MX domain, a pickup folder."""

    key: str
    kind: str  # pickup | relay | mx | discard | none
    folder: str | None = None
    relays: tuple[str, ...] = ()  # a relay route: the relay, then its fallbacks in order
    domain: str | None = None


def destination_for(recipient: str, routes) -> Destination:
    route = route_for(recipient, routes)
    if route is None:
        return Destination("none", "none")
    if isinstance(route, PickupRoute):
        return Destination(f"pickup:{route.folder}", "pickup", folder=route.folder)
    if isinstance(route, DiscardRoute):
        return Destination("discard", "discard")
    if isinstance(route, RelayRoute):
        return Destination(f"relay:{route.relay}", "relay", relays=(route.relay, *route.fallback))
    if isinstance(route, MxRoute):
        domain = recipient.rpartition("@")[2].lower()
        return Destination(f"mx:{domain}", "mx", domain=domain)
    raise AssertionError(f"unknown route {route!r}")


def is_suppressed(recipient: str, addresses: frozenset[str], domains: tuple[str, ...]) -> bool:
    recipient = recipient.lower()
    if recipient in addresses:
        return True
    domain = recipient.rpartition("@")[2]
    return any(matches(pattern, domain) for pattern in domains)
