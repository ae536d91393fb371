"""Subscribers as runtime data: who receives a list's posts or digests, with which roles, in which state.

The manifest's subscribers are synced in on apply (source 'manifest'); people who join by mail, by the
web or by import are rows the engine owns. A member's own choice wins over the manifest: someone who
unsubscribed stays unsubscribed when the manifest is applied again, until they subscribe again.
Every change is written to `subscription_changes` (the subscriptions report) and every join fires the
list's built-in `join` event."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from . import events
from .tables import subscribers, subscription_changes

RECEIVING_ROLES = ("regular", "digest")


def encode_roles(roles: Iterable[str]) -> str:
    return ",".join(sorted({str(getattr(r, "value", r)) for r in roles}))


def receives_of(roles: Iterable[str]) -> str:
    roles = {str(getattr(r, "value", r)) for r in roles}
    return "post" if "regular" in roles else "digest" if "digest" in roles else ""


@dataclass(frozen=True)
class Member:
    list_name: str
    address: str
    name: str | None
    roles: frozenset[str]
    receives: str  # post | digest | ''
    state: str  # active | unsubscribed | disabled
    source: str
    joined_at: float
    bounce_score: float = 0.0
    bounce_last_at: float | None = None

    @property
    def receiving(self) -> bool:
        return self.state == "active" and self.receives != ""

    @property
    def effective_roles(self) -> frozenset[str]:
        """Roles that count for posting: someone who unsubscribed is no longer a regular or digest member."""
        if self.state == "unsubscribed":
            return self.roles - set(RECEIVING_ROLES)
        return self.roles


def _member(row) -> Member:
    return Member(row.list_name, row.address, row.name, frozenset(filter(None, row.roles.split(","))),
                  row.receives, row.state, row.source, row.joined_at, row.bounce_score, row.bounce_last_at)


def log(conn: Connection, list_name: str, address: str, action: str, source: str, now: float,
        detail: str | None = None) -> None:
    conn.execute(insert(subscription_changes).values(list_name=list_name, address=address, action=action,
                                                     source=source, detail=detail, at=now))


def get(conn: Connection, list_name: str, address: str) -> Member | None:
    row = conn.execute(select(subscribers).where(subscribers.c.list_name == list_name,
                                                 subscribers.c.address == address.lower())).first()
    return _member(row) if row else None


def members(conn: Connection, list_name: str, *, receiving_only: bool = False) -> list[Member]:
    query = select(subscribers).where(subscribers.c.list_name == list_name)
    if receiving_only:
        query = query.where(subscribers.c.state == "active", subscribers.c.receives != "")
    return [_member(r) for r in conn.execute(query.order_by(subscribers.c.address))]


def stream(conn: Connection, list_name: str, receives: str = "post") -> Iterator[str]:
    """The addresses that receive each post (or each digest), streamed in address order."""
    result = conn.execute(select(subscribers.c.address).where(
        subscribers.c.list_name == list_name, subscribers.c.receives == receives,
        subscribers.c.state == "active").order_by(subscribers.c.address))
    for (address,) in result:
        yield address


def with_role(conn: Connection, list_name: str, role: str) -> list[str]:
    """Members holding a role (e.g. the moderators), whatever their delivery state."""
    rows = conn.execute(select(subscribers).where(subscribers.c.list_name == list_name)
                        .order_by(subscribers.c.address))
    return [m.address for m in map(_member, rows) if role in m.effective_roles]


def roles_for(conn: Connection, list_names: Iterable[str], senders: Iterable[str]) -> dict[str, frozenset[str]]:
    """The roles the message's senders hold on each list (all senders' roles together)."""
    list_names, senders = list(set(list_names)), [s.lower() for s in set(senders)]
    if not list_names or not senders:
        return {}
    found: dict[str, set[str]] = {}
    for row in conn.execute(select(subscribers).where(subscribers.c.list_name.in_(list_names),
                                                      subscribers.c.address.in_(senders))):
        found.setdefault(row.list_name, set()).update(_member(row).effective_roles)
    return {name: frozenset(roles) for name, roles in found.items()}


def _joined(conn: Connection, list_name: str, address: str, source: str, now: float, detail: str | None = None):
    log(conn, list_name, address, "join", source, now, detail)
    events.record_fires(conn, list_name, "join", [address], now)


JOIN_CHUNK = 5000


def sync_manifest(conn: Connection, list_name: str, entries: Iterable[Mapping], now: float) -> list[str]:
    """Make the manifest's subscribers (dicts of address, name, roles) the list's 'manifest' rows.

    Returns who joined (they fire `join`). Rows of other sources are left alone unless the manifest now
    names them; a member who unsubscribed stays unsubscribed."""
    wanted = {e["address"].lower(): e for e in entries}
    have = {m.address: m for m in members(conn, list_name)}
    joined: list[str] = []
    fresh: list[dict] = []  # new members are written together: a few statements, not five per member
    for address, entry in wanted.items():
        roles = frozenset(str(getattr(r, "value", r)) for r in (entry.get("roles") or ["regular"]))
        receives = receives_of(roles)
        name = entry.get("name")
        row = have.get(address)
        if row is None:
            fresh.append(dict(list_name=list_name, address=address, source="manifest", joined_at=now, name=name,
                              roles=encode_roles(roles), receives=receives, state="active", updated_at=now))
            continue
        if row.roles == roles and row.name == name and row.source == "manifest":
            continue
        conn.execute(update(subscribers).where(subscribers.c.list_name == list_name,
                                               subscribers.c.address == address)
                     .values(roles=encode_roles(roles), receives=receives, name=name, source="manifest",
                             updated_at=now))
        if row.roles != roles:
            log(conn, list_name, address, "roles", "manifest", now, encode_roles(roles))
        if receives and not row.receives and row.state == "active":
            _joined(conn, list_name, address, "manifest", now)
            joined.append(address)
    if fresh:
        conn.execute(insert(subscribers), fresh)
        receiving = [row["address"] for row in fresh if row["receives"]]
        if receiving:
            conn.execute(insert(subscription_changes), [dict(list_name=list_name, address=a, action="join",
                                                             source="manifest", detail=None, at=now)
                                                        for a in receiving])
            for start in range(0, len(receiving), JOIN_CHUNK):  # bounded IN lists (PostgreSQL's 65,535)
                events.record_fires(conn, list_name, "join", receiving[start:start + JOIN_CHUNK], now)
            joined.extend(receiving)
    gone = [m for a, m in have.items() if m.source == "manifest" and a not in wanted]
    if gone:
        conn.execute(delete(subscribers).where(subscribers.c.list_name == list_name,
                                               subscribers.c.address.in_([m.address for m in gone])))
        for m in gone:
            if m.receiving:
                log(conn, list_name, m.address, "leave", "manifest", now)
    return joined


def subscribe(conn: Connection, list_name: str, address: str, now: float, source: str, *,
              name: str | None = None, digest: bool = False) -> str:
    """Add a receiving member. Returns 'joined', 'enabled' (delivery was disabled) or 'already'."""
    address = address.lower()
    role = "digest" if digest else "regular"
    row = get(conn, list_name, address)
    if row is None:
        conn.execute(insert(subscribers).values(
            list_name=list_name, address=address, source=source, joined_at=now, name=name, roles=role,
            receives=receives_of([role]), state="active", updated_at=now))
        _joined(conn, list_name, address, source, now)
        return "joined"
    if row.receiving:
        return "already"
    if row.state == "disabled" and row.receives:
        conn.execute(update(subscribers).where(subscribers.c.list_name == list_name, subscribers.c.address == address)
                     .values(state="active", bounce_score=0, updated_at=now))
        log(conn, list_name, address, "enabled", source, now)
        return "enabled"
    roles = (row.roles - set(RECEIVING_ROLES)) | {role}
    conn.execute(update(subscribers).where(subscribers.c.list_name == list_name, subscribers.c.address == address)
                 .values(roles=encode_roles(roles), receives=receives_of(roles), state="active", bounce_score=0,
                         name=name or row.name, updated_at=now))
    _joined(conn, list_name, address, source, now)
    return "joined"


def unsubscribe(conn: Connection, list_name: str, address: str, now: float, source: str,
                detail: str | None = None) -> bool:
    """Stop every post and digest to the address at once. The row stays (as 'unsubscribed') so the
    manifest cannot silently add them back, and so their other roles (moderator, ...) keep working."""
    row = get(conn, list_name, address)
    if row is None or row.state == "unsubscribed" or not row.receives:
        return False
    conn.execute(update(subscribers).where(subscribers.c.list_name == list_name,
                                           subscribers.c.address == row.address)
                 .values(state="unsubscribed", updated_at=now))
    log(conn, list_name, row.address, "leave", source, now, detail)
    return True


def set_digest(conn: Connection, list_name: str, address: str, on: bool, now: float, source: str) -> bool:
    """Switch a receiving member between single posts and digests; False when there is nothing to switch."""
    row = get(conn, list_name, address)
    if row is None or not row.receiving or (row.receives == "digest") == on:
        return False
    roles = (row.roles - set(RECEIVING_ROLES)) | {"digest" if on else "regular"}
    conn.execute(update(subscribers).where(subscribers.c.list_name == list_name,
                                           subscribers.c.address == row.address)
                 .values(roles=encode_roles(roles), receives=receives_of(roles), updated_at=now))
    log(conn, list_name, row.address, "digest_on" if on else "digest_off", source, now)
    return True


def disable(conn: Connection, list_name: str, address: str, now: float, source: str, detail: str | None = None) -> bool:
    """Delivery stops (e.g. too many bounces); the member stays and may re-enable by subscribing again."""
    row = get(conn, list_name, address)
    if row is None or row.state != "active":
        return False
    conn.execute(update(subscribers).where(subscribers.c.list_name == list_name,
                                           subscribers.c.address == row.address)
                 .values(state="disabled", updated_at=now))
    log(conn, list_name, row.address, "disabled", source, now, detail)
    return True


def enable(conn: Connection, list_name: str, address: str, now: float, source: str) -> bool:
    row = get(conn, list_name, address)
    if row is None or row.state != "disabled":
        return False
    conn.execute(update(subscribers).where(subscribers.c.list_name == list_name,
                                           subscribers.c.address == row.address)
                 .values(state="active", bounce_score=0, bounce_last_at=None, updated_at=now))
    log(conn, list_name, row.address, "enabled", source, now)
    return True


def changes(conn: Connection, since: float, until: float, list_name: str | None = None) -> list[dict]:
    query = select(subscription_changes).where(subscription_changes.c.at >= since, subscription_changes.c.at < until)
    if list_name is not None:
        query = query.where(subscription_changes.c.list_name == list_name)
    return [dict(r._mapping) for r in conn.execute(query.order_by(subscription_changes.c.id))]


def opt_out(conn: Connection, list_name: str, address: str, now: float, source: str,
            detail: str | None = None) -> bool:
    """A dynamic list's member asks for no more posts. Its query may select them again at every post, so
    the choice is kept as an 'unsubscribed' row (made if need be) that the list's fan-out skips; their
    other roles (moderator, ...) keep working. False when they had opted out already."""
    address = address.lower()
    row = get(conn, list_name, address)
    if row is not None and row.state == "unsubscribed":
        return False
    if row is None:
        conn.execute(insert(subscribers).values(
            list_name=list_name, address=address, source=source, joined_at=now, roles="regular",
            receives="post", state="unsubscribed", updated_at=now))
    else:
        conn.execute(update(subscribers).where(subscribers.c.list_name == list_name,
                                               subscribers.c.address == address)
                     .values(state="unsubscribed", updated_at=now))
    log(conn, list_name, address, "leave", source, now, detail)
    return True


def opted_out(conn: Connection, list_name: str) -> frozenset[str]:
    """The addresses that left a dynamic list: few next to its selection, which is streamed past them."""
    return frozenset(conn.execute(select(subscribers.c.address).where(
        subscribers.c.list_name == list_name, subscribers.c.state == "unsubscribed")).scalars())
