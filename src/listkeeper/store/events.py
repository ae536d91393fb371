"""Event counters: who is eligible for an event is one set-based SQL statement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import and_, bindparam, delete, func, insert, literal, or_, select, true, update
from sqlalchemy.engine import Connection

from listkeeper.manifests.events import Dependency, EventSpec

from .tables import event_counters, event_fires, subscribers


def _receiving():
    return and_(subscribers.c.state == "active", subscribers.c.receives != "")


def record_fires(conn: Connection, list_name: str, event: str, addresses: Sequence[str], now: float) -> None:
    """Count one fire of `event` for each address, and log it with its time."""
    if not addresses:
        return
    existing = set(conn.execute(select(event_counters.c.address).where(
        event_counters.c.list_name == list_name, event_counters.c.event == event,
        event_counters.c.address.in_(addresses))).scalars())
    if existing:
        conn.execute(update(event_counters).where(
            event_counters.c.list_name == list_name, event_counters.c.event == event,
            event_counters.c.address.in_(existing)).values(count=event_counters.c.count + 1, last_at=now))
    fresh = [a for a in addresses if a not in existing]
    if fresh:
        conn.execute(insert(event_counters), [dict(list_name=list_name, address=a, event=event, count=1, last_at=now)
                                              for a in fresh])
    conn.execute(insert(event_fires), [dict(list_name=list_name, address=a, event=event, at=now) for a in addresses])


def _count(list_name: str, event: str):
    return func.coalesce(select(event_counters.c.count).where(
        event_counters.c.list_name == list_name, event_counters.c.address == subscribers.c.address,
        event_counters.c.event == event).scalar_subquery(), 0)


def _holds(list_name: str, dep: Dependency):
    count = _count(list_name, dep.event)
    if dep.never:
        return count == 0
    if dep.exactly is not None:
        return count == dep.exactly
    parts = []
    if dep.at_least is not None:
        parts.append(count >= dep.at_least)
    if dep.at_most is not None:
        parts.append(count <= dep.at_most)
    return and_(*parts)


def eligible(list_name: str, event: EventSpec, now: float):
    """The subscribers for whom `event` fires now: dependencies hold, and it is due."""
    deps = [_holds(list_name, d) for d in event.depends]
    holds = true() if not deps else (and_(*deps) if event.match == "all" else or_(*deps))
    if event.repeat:
        last = select(event_counters.c.last_at).where(
            event_counters.c.list_name == list_name, event_counters.c.address == subscribers.c.address,
            event_counters.c.event == event.name).scalar_subquery()
        due = or_(last.is_(None), last <= literal(now - event.repeat))
    else:
        due = _count(list_name, event.name) == 0  # no repeat: once per subscriber
    return (select(subscribers.c.address).where(subscribers.c.list_name == list_name, _receiving(), holds, due)
            .order_by(subscribers.c.address))


def counters(conn: Connection, list_name: str, addresses: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    query = select(event_counters.c.address, event_counters.c.event, event_counters.c.count).where(
        event_counters.c.list_name == list_name)
    if addresses is not None:
        query = query.where(event_counters.c.address.in_(addresses))
    out: dict[str, dict[str, int]] = {}
    for address, event, count in conn.execute(query):
        out.setdefault(address, {})[event] = count
    return out


def list_subscribers(conn: Connection, list_name: str) -> list[str]:
    """Who receives the list now (posts or digests): the members events fire for."""
    return list(conn.execute(select(subscribers.c.address).where(subscribers.c.list_name == list_name, _receiving())
                             .order_by(subscribers.c.address)).scalars())


def fires(conn: Connection, list_name: str, event: str) -> list[tuple[str, float]]:
    return [tuple(r) for r in conn.execute(select(event_fires.c.address, event_fires.c.at).where(
        event_fires.c.list_name == list_name, event_fires.c.event == event).order_by(event_fires.c.at))]


def counters_by_event(conn: Connection) -> dict[tuple[str, str], int]:
    """How many subscribers have a counter for each (list, event): what removing an event drops."""
    rows = conn.execute(select(event_counters.c.list_name, event_counters.c.event, func.count())
                        .group_by(event_counters.c.list_name, event_counters.c.event))
    return {(name, event): count for name, event, count in rows}


def drop_events_except(conn: Connection, list_name: str, keep: Iterable[str]) -> int:
    """Counters of events the list no longer defines (the plan said how many)."""
    return conn.execute(delete(event_counters).where(event_counters.c.list_name == list_name,
                                                     event_counters.c.event.not_in(list(keep)))).rowcount


_ADD = (update(event_counters)
        .where(event_counters.c.list_name == bindparam("b_list"), event_counters.c.address == bindparam("b_address"),
               event_counters.c.event == bindparam("b_event"))
        .values(count=event_counters.c.count + bindparam("b_n"), last_at=bindparam("b_now")))


def record_many(conn: Connection, event: str, fires: Iterable[tuple[str, str]], now: float) -> None:
    """Fires of one event for (list, address) pairs, repeats counted, in a few statements for a whole batch."""
    wanted = Counter(fires)
    if not wanted:
        return
    lists = {name for name, _ in wanted}
    members = set(tuple(r) for r in conn.execute(select(subscribers.c.list_name, subscribers.c.address).where(
        subscribers.c.list_name.in_(lists), subscribers.c.address.in_({a for _, a in wanted}), _receiving())))
    counted = {key: n for key, n in wanted.items() if key in members}
    if not counted:
        return
    existing = set(tuple(r) for r in conn.execute(select(event_counters.c.list_name, event_counters.c.address).where(
        event_counters.c.event == event, event_counters.c.list_name.in_(lists),
        event_counters.c.address.in_({a for _, a in counted}))))
    updates = [dict(b_list=l, b_address=a, b_event=event, b_n=n, b_now=now)
               for (l, a), n in counted.items() if (l, a) in existing]
    if updates:
        conn.execute(_ADD, updates)
    fresh = [dict(list_name=l, address=a, event=event, count=n, last_at=now)
             for (l, a), n in counted.items() if (l, a) not in existing]
    if fresh:
        conn.execute(insert(event_counters), fresh)
    conn.execute(insert(event_fires), [dict(list_name=l, address=a, event=event, at=now)
                                       for (l, a), n in counted.items() for _ in range(n)])
