"""RoutingTable and Relay: where outgoing mail goes, by recipient domain."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field

from .common import Hostname, Manifest, SecretRef, Strict

DOMAIN_PATTERN = r"^(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$"
Pattern = Annotated[
    str,
    Field(pattern=DOMAIN_PATTERN, description="example.org, *.example.org or *"),
]


class PickupRoute(Strict):
    match: Pattern
    transport: Literal["pickup"]
    folder: str = Field(min_length=1, description="Folder receiving one .eml file per delivery.")


class RelayRoute(Strict):
    match: Pattern
    transport: Literal["relay"]
    relay: str = Field(description="metadata.name of a Relay.")


class MxRoute(Strict):
    match: Pattern
    transport: Literal["mx"]


class DiscardRoute(Strict):
    match: Pattern
    transport: Literal["discard"]


Route = Annotated[
    Union[PickupRoute, RelayRoute, MxRoute, DiscardRoute], Field(discriminator="transport")
]


class RoutingTableSpec(Strict):
    routes: list[Route] = Field(min_length=1, description="Ordered; the first match wins.")


def matches(pattern: str, domain: str) -> bool:
    pattern, domain = pattern.lower(), domain.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


def route_for(recipient: str, routes) -> "Route | None":
    """The first route whose pattern matches the recipient's domain."""
    domain = recipient.rpartition("@")[2]
    return next((route for route in routes if matches(route.match, domain)), None)


def describe(route) -> str:
    """Where a route sends mail, as one word an operator reads in a plan."""
    if route is None:
        return "no route"
    if isinstance(route, PickupRoute):
        return f"pickup:{route.folder}"
    if isinstance(route, RelayRoute):
        return f"relay:{route.relay}"
    return route.transport


class RoutingTable(Manifest):
    """Maps recipient domains to a transport. One RoutingTable per configuration."""

    KIND: ClassVar[str] = "RoutingTable"
    kind: Literal["RoutingTable"]
    spec: RoutingTableSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return [
            (("spec", "routes", i, "relay"), f"no Relay named {route.relay!r}")
            for i, route in enumerate(self.spec.routes)
            if isinstance(route, RelayRoute) and route.relay not in index.relays
        ]


class TlsMode(str, Enum):
    none = "none"
    starttls = "starttls"
    implicit = "implicit"


class RelayAuth(Strict):
    username: str = Field(min_length=1)
    password: SecretRef


class RelaySpec(Strict):
    host: Hostname
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default: 465 for implicit TLS, 587 for starttls, 25 for none."
    )
    tls: TlsMode = TlsMode.starttls
    auth: RelayAuth | None = None
    timeout: float = Field(default=60.0, gt=0, le=600, description="Seconds.")

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {TlsMode.implicit: 465, TlsMode.starttls: 587, TlsMode.none: 25}[self.tls]


class Relay(Manifest):
    """A smart host that outgoing mail can be handed to."""

    KIND: ClassVar[str] = "Relay"
    kind: Literal["Relay"]
    spec: RelaySpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return []
