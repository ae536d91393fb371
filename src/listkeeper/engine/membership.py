"""Who the senders of a message are to the lists it reaches: roles from the store, dynamic selections
from the member directories. The one lookup done before the (pure) posting rules run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType

from sqlalchemy.engine import Connection

from listkeeper.store import digests
from listkeeper.store import directory as member_directory
from listkeeper.store import subscribers

from .recipients import Recipient, Target
from .snapshot import ListConfig, Snapshot


@dataclass(frozen=True)
class Membership:
    roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))  # by list name
    selected: frozenset[str] = frozenset()  # dynamic lists whose query selects a sender
    posters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # list -> sending member


def lists_consulted(recipients: Iterable[Recipient], snapshot: Snapshot) -> list[ListConfig]:
    """The lists posted to, and the lists whose members may cross-post to them."""
    by_name = {lst.name: lst for lst in snapshot.lists.values()}
    found: dict[str, ListConfig] = {}
    for rcpt in recipients:
        if rcpt.list is None:
            continue
        found[rcpt.list.name] = rcpt.list
        if rcpt.target is Target.post:
            for other in rcpt.list.spec.cross_posters:
                if other in by_name:
                    found[other] = by_name[other]
    return list(found.values())


def look_up(conn: Connection, senders: frozenset[str], recipients: list[Recipient], snapshot: Snapshot,
            now: float) -> Membership:
    lists = lists_consulted(recipients, snapshot)
    if not lists or not senders:
        return Membership()
    rows = subscribers.roles_for(conn, [lst.name for lst in lists], senders)
    posters = {}
    for lst in lists:
        for address in sorted(senders):
            member = subscribers.get(conn, lst.name, address) if lst.name in rows else None
            if member is not None and member.receiving:
                posters[lst.name] = address
                break
    moment = datetime.fromtimestamp(now, timezone.utc)
    selected = frozenset(
        lst.name for lst in lists if lst.spec.members is not None and any(
            r.list is lst and r.target is Target.post for r in recipients)
        and member_directory.poster_addresses(snapshot.directories[lst.spec.members.directory],
                                              tuple(lst.spec.members.query), senders, moment))
    return Membership(MappingProxyType(rows), selected, MappingProxyType(posters))


def look_up_in(store, data: bytes, mail_from: str, recipients: list[Recipient], snapshot: Snapshot,
               now: float) -> Membership:
    """The lookup with its own store connection (run in a thread by the SMTP handler)."""
    if not lists_consulted(recipients, snapshot):
        return Membership()
    from .fanout import senders_of  # the one helper shared with the fan-out
    from .headers import RawMessage
    senders = senders_of(RawMessage.parse(data), mail_from)
    with store.engine.connect() as conn:
        return look_up(conn, senders, recipients, snapshot, now)


def from_manifests(senders: frozenset[str], lists: Iterable[ListConfig]) -> Membership:
    """The roles the manifests alone declare: for pure uses (tests, previews) with no store at hand."""
    roles: dict[str, frozenset[str]] = {}
    posters: dict[str, str] = {}
    for lst in lists:
        found: set[str] = set()
        for s in lst.spec.subscribers:
            if s.address in senders:
                found.update(r.value for r in s.roles)
                if {"regular", "digest"} & {r.value for r in s.roles}:
                    posters.setdefault(lst.name, s.address)
        if found:
            roles[lst.name] = frozenset(found)
    return Membership(MappingProxyType(roles), frozenset(), MappingProxyType(posters))


def moderators(lst: ListConfig):
    """The list's moderators, read from the store when the notice is written."""
    return lambda conn: subscribers.with_role(conn, lst.name, "moderator")


def receivers(lst: ListConfig, snapshot: Snapshot, now: float):
    """Who receives each post, streamed when the spool writes it (never a Python list of every member):
    a static list's active regular members from the store, or a dynamic list's query selection less
    those who opted out (one-click unsubscribe)."""
    if lst.spec.members is None:
        return lambda conn: subscribers.stream(conn, lst.name, "post")
    directory = snapshot.directories[lst.spec.members.directory]
    query = tuple(lst.spec.members.query)
    moment = datetime.fromtimestamp(now, timezone.utc)

    def selected(conn: Connection):
        left = subscribers.opted_out(conn, lst.name)  # one-click unsubscribes of a dynamic list
        chosen = (a for a in member_directory.stream(directory, query, moment) if a not in left)
        return digests.excluding_members(conn, lst.name, chosen)  # digest members get no single posts
    return selected
