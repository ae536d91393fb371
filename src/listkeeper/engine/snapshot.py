"""The engine's configuration: an immutable snapshot built from the store, swapped whole."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from listkeeper.manifests.accounts import SmtpAccountSpec
from listkeeper.manifests.barring import BarringSpec
from listkeeper.manifests.common import API_VERSION
from listkeeper.manifests.directory import MemberDirectorySpec
from listkeeper.manifests.domains import DomainSpec
from listkeeper.manifests.kinds import KINDS
from listkeeper.manifests.lists import MailingListSpec
from listkeeper.manifests.notifications import NotificationSpec
from listkeeper.manifests.reports import ReportSpec
from listkeeper.manifests.routes import Delivery, Dns, RelaySpec, Route
from listkeeper.store import Store
from listkeeper.store import config as applied_config


@dataclass(frozen=True)
class ListConfig:
    name: str
    spec: MailingListSpec

    @property
    def local_part(self) -> str:
        return self.spec.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.spec.address.rpartition("@")[2]

    def address_for(self, suffix: str) -> str:
        return f"{self.local_part}-{suffix}@{self.domain}"


@dataclass(frozen=True)
class Snapshot:
    generation: int
    domains: Mapping[str, DomainSpec]  # by mail domain
    lists: Mapping[str, ListConfig]  # by posting address
    routes: tuple[Route, ...]
    relays: Mapping[str, RelaySpec]
    delivery: Delivery = Delivery()
    dns: Dns = Dns()
    suppressed_addresses: frozenset[str] = frozenset()
    suppressed_domains: tuple[str, ...] = ()
    directories: Mapping[str, MemberDirectorySpec] = field(default_factory=lambda: MappingProxyType({}))
    barring: tuple[BarringSpec, ...] = ()
    notifications: Mapping[str, NotificationSpec] = field(default_factory=lambda: MappingProxyType({}))  # by name
    reports: Mapping[str, ReportSpec] = field(default_factory=lambda: MappingProxyType({}))  # by name
    accounts: Mapping[str, SmtpAccountSpec] = field(default_factory=lambda: MappingProxyType({}))  # by username
    # every applied resource's hash and validated spec: the next load reuses those whose hash is unchanged
    applied: Mapping[tuple[str, str], tuple[str, Any]] = field(default_factory=lambda: MappingProxyType({}),
                                                               repr=False, compare=False)

    def hostname(self, domain: str | None = None) -> str:
        if domain in self.domains:
            return self.domains[domain].hostname
        return next((d.hostname for d in self.domains.values()), "localhost")


def _spec(kind: str, name: str, spec: dict):
    return KINDS[kind].model_validate(
        {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
    ).spec


def load_snapshot(store: Store, previous: Snapshot | None = None) -> Snapshot:
    """The applied configuration as a snapshot. Given the one running now, only resources whose hash
    changed are fetched, parsed and validated again: a reload of one list among thousands stays cheap."""
    known = previous.applied if previous is not None else {}
    with store.engine.connect() as conn:
        generation = applied_config.generation(conn)  # first: a snapshot never claims a newer one than it holds
        if known:
            hashes = {key: spec_hash for key, (_, spec_hash) in applied_config.fingerprints(conn).items()}
            changed = [key for key, spec_hash in hashes.items() if key not in known or known[key][0] != spec_hash]
            rows = applied_config.applied_specs(conn, changed if len(changed) <= applied_config.FEW else None)
        else:
            hashes, rows = None, applied_config.applied_specs(conn)
    applied = {(kind, name): (spec_hash, _spec(kind, name, json.loads(body))) for kind, name, spec_hash, body in rows}
    if hashes is not None:  # the unchanged ones, as they were
        applied.update({key: known[key] for key, spec_hash in hashes.items()
                        if key not in applied and key in known and known[key][0] == spec_hash})
    return _assemble(generation, applied)


def _assemble(generation: int, applied: dict[tuple[str, str], tuple[str, Any]]) -> Snapshot:
    domains, lists, relays, routes = {}, {}, {}, ()
    delivery, dns_settings = Delivery(), Dns()
    addresses: set[str] = set()
    patterns: list[str] = []
    directories: dict[str, MemberDirectorySpec] = {}
    barring: list[BarringSpec] = []
    notifications: dict[str, NotificationSpec] = {}
    reports: dict[str, ReportSpec] = {}
    accounts: dict[str, SmtpAccountSpec] = {}
    for (kind, name), (_, spec) in sorted(applied.items()):
        if kind == "Domain":
            domains[spec.domain] = spec
        elif kind == "MailingList":
            lists[spec.address] = ListConfig(name, spec)
        elif kind == "Relay":
            relays[name] = spec
        elif kind == "RoutingTable":
            routes, delivery, dns_settings = tuple(spec.routes), spec.delivery, spec.dns
        elif kind == "MemberDirectory":
            directories[name] = spec
        elif kind == "Barring":
            barring.append(spec)
        elif kind == "Notification":
            notifications[name] = spec
        elif kind == "Report":
            reports[name] = spec
        elif kind == "SmtpAccount":
            accounts[spec.username] = spec
        elif kind == "SuppressionList":
            addresses.update(spec.addresses)
            patterns.extend(spec.domains)
    return Snapshot(generation, MappingProxyType(domains), MappingProxyType(lists), routes,
                    MappingProxyType(relays), delivery, dns_settings, frozenset(addresses), tuple(patterns),
                    MappingProxyType(directories), tuple(barring), MappingProxyType(notifications),
                    MappingProxyType(reports), accounts=MappingProxyType(accounts),
                    applied=MappingProxyType(applied))
