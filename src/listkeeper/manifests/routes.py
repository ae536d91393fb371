"""RoutingTable and Relay: where outgoing mail goes, by recipient domain."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, field_validator

from .common import Address, Duration, Hostname, Manifest, SecretRef, Strict

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
    fallback: list[str] = Field(default_factory=list,
                                description="Relays tried in order when the first cannot be reached.")


class MxRoute(Strict):
    match: Pattern
    transport: Literal["mx"]


class DiscardRoute(Strict):
    match: Pattern
    transport: Literal["discard"]


Route = Annotated[
    Union[PickupRoute, RelayRoute, MxRoute, DiscardRoute], Field(discriminator="transport")
]


class Throttle(Strict):
    messages: int = Field(ge=1, description="Send this many messages ...")
    pause: Duration = Field(description="... then pause this long.")


class Retry(Strict):
    first: Duration = Field(default=300, description="First retry after a temporary failure (Postfix: 5m).")
    maximum: Duration = Field(default=4000, description="Backoff doubles up to this (Postfix: about 67m).")
    lifetime: Duration = Field(default=5 * 86400, description="Then a temporary failure is final (5d).")


BACKUP_PLACEHOLDERS = ("list", "recipient", "subject", "date", "message_id")


class Backup(Strict):
    folder: str = Field(min_length=1, description="Every sent message is also written under this folder.")
    path: str = Field(default="{date}/{list}/{message_id}-{recipient}.eml",
                      description="Placeholders: {list} {recipient} {subject} {date} {message_id}.")

    @field_validator("path")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        import string
        try:
            names = {n for _, n, _, _ in string.Formatter().parse(value) if n is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid path template: {exc}") from None
        unknown = names - set(BACKUP_PLACEHOLDERS)
        if unknown:
            raise ValueError(f"unknown placeholder(s) {', '.join(sorted(unknown))}; "
                             f"use {', '.join(BACKUP_PLACEHOLDERS)}")
        if value.startswith(("/", "\\")) or ".." in value.split("/"):
            raise ValueError("the path must stay inside the backup folder (no leading / and no ..)")
        return value


class Delivery(Strict):
    max_connections: int = Field(default=20, ge=1, le=99, description="Parallel delivery connections in all.")
    per_destination: int = Field(default=5, ge=1, le=99, description="Parallel connections per destination.")
    messages_per_connection: int = Field(default=100, ge=1, le=10000)
    throttle: Throttle | None = None
    run_limit: int = Field(default=0, ge=0, description="Deliveries per scheduler run; 0: no limit. "
                                                         "The rest stays queued for the next run.")
    run_interval: Duration = Field(default=1.0, gt=0, description="Time between scheduler runs.")
    smarthost_delay: Duration = Field(default=0, description="Wait this long before connecting to a relay.")
    retry: Retry = Field(default_factory=Retry)
    archive_copy: Address | None = Field(
        default=None, description="A local address (of a served domain) receiving a copy of all outgoing mail.")
    backup: Backup | None = None
    mx_port: int = Field(default=25, ge=1, le=65535, description="Port of MX hosts (25; tests use others).")


class NameServer(Strict):
    address: str = Field(min_length=1)
    port: int = Field(default=53, ge=1, le=65535)


class Dns(Strict):
    nameservers: list[NameServer] = Field(default_factory=list,
                                          description="Empty: the system's resolvers (/etc/resolv.conf).")
    timeout: Duration = Field(default=5.0, gt=0)
    avoid_failing_for: Duration = Field(default=60.0, description="A name server that failed is skipped this long.")


class RoutingTableSpec(Strict):
    routes: list[Route] = Field(min_length=1, description="Ordered; the first match wins.")
    delivery: Delivery = Field(default_factory=Delivery)
    dns: Dns = Field(default_factory=Dns)


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
        found = []
        for i, route in enumerate(self.spec.routes):
            if not isinstance(route, RelayRoute):
                continue
            if route.relay not in index.relays:
                found.append((("spec", "routes", i, "relay"), f"no Relay named {route.relay!r}"))
            found.extend((("spec", "routes", i, "fallback", j), f"no Relay named {name!r}")
                         for j, name in enumerate(route.fallback) if name not in index.relays)
        copy = self.spec.delivery.archive_copy
        if copy and copy.rpartition("@")[2] not in index.served_domains:
            found.append((("spec", "delivery", "archive_copy"),
                          "the archive copy must go to a local address (a served Domain), never outside"))
        return found


class TlsMode(str, Enum):
    none = "none"
    starttls = "starttls"  # required
    implicit = "implicit"
    opportunistic = "opportunistic"  # STARTTLS when offered (direct MX delivery)


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
    timeout: Duration = Field(default=60.0, gt=0, le=600)
    tls_ca_file: str | None = Field(default=None, description="CA bundle to verify the relay with "
                                                              "(default: the system's).")

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {TlsMode.implicit: 465, TlsMode.starttls: 587}.get(self.tls, 25)


class Relay(Manifest):
    """A smart host that outgoing mail can be handed to."""

    KIND: ClassVar[str] = "Relay"
    kind: Literal["Relay"]
    spec: RelaySpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return []
