"""Event counters: who is eligible for an event is one set-based SQL statement, and a fire is a few
set-based statements whatever the number of subscribers it reaches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import (
    Column, MetaData, String, Table, and_, bindparam, delete, except_, exists, func, insert, literal, literal_column,
    or_, select, text, true, update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean

from listkeeper.manifests.events import Dependency, EventSpec

from .tables import event_counters, event_fires, subscribers

# the addresses one fire reaches, on this connection only: a tick computes them once and every
# statement of the fire (counters, log, template mail) reads them. No key: what is chosen is distinct
# already (a set difference, a list's subscribers, or addresses made unique), and appending is cheaper
chosen = Table("event_chosen", MetaData(), Column("address", String(254), nullable=False), prefixes=["TEMPORARY"])
_CREATE_CHOSEN = text("CREATE TEMPORARY TABLE IF NOT EXISTS event_chosen (address VARCHAR(254) NOT NULL)")


def _receiving():
    return and_(subscribers.c.state == "active", subscribers.c.receives != "")


class _ReceivingRow(ColumnElement):
    """EXISTS a receiving subscriber of the list at `address`: one seek of ix_subscribers_receiving,
    which holds all it reads. SQLite's planner would take the primary key's index and read each row,
    so there the index is named."""

    type = Boolean()
    inherit_cache = True  # cached as its inner statement is: a tick compiles each statement once per process
    _traverse_internals = [("check", InternalTraversal.dp_clauseelement)]

    def __init__(self, list_name: str, address):
        self.check = select(literal_column("1")).where(  # not SELECT *: that would read the row
            subscribers.c.list_name == list_name, subscribers.c.address == address, _receiving()).exists()


@compiles(_ReceivingRow)
def _receiving_row_sql(element, compiler, **kw):
    return compiler.process(element.check, **kw)


@compiles(_ReceivingRow, "sqlite")
def _receiving_row_sqlite(element, compiler, **kw):
    return compiler.process(element.check, **kw).replace(
        "FROM subscribers", "FROM subscribers INDEXED BY ix_subscribers_receiving", 1)


_receiving_row = _ReceivingRow


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


def _predicate(dep: Dependency, count):
    """The dependency as a condition on a fire count (a missing counter counts 0)."""
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


def _holds(list_name: str, dep: Dependency):
    return _predicate(dep, _count(list_name, dep.event))


def _needs_counter(dep: Dependency) -> bool:
    """Whether the dependency fails at count 0, so only subscribers with a counter can meet it."""
    if dep.never:
        return False
    if dep.exactly is not None:
        return dep.exactly > 0
    return (dep.at_least or 0) > 0


def _always(dep: Dependency) -> bool:
    return not dep.never and dep.exactly is None and dep.at_most is None and not dep.at_least


def _counted(list_name: str, event: str, condition, alias=event_counters):
    """Addresses with a counter of `event` that meets `condition`: one range of the key, in address order."""
    return select(alias.c.address).where(alias.c.list_name == list_name, alias.c.event == event,
                                         condition(alias.c.count) if callable(condition) else condition)


def _not_due(list_name: str, event: EventSpec, now: float):
    """Who `event` may not fire for now: it fired (no repeat), or fired less than `repeat` ago."""
    if event.repeat:
        return _counted(list_name, event.name, event_counters.c.last_at > now - event.repeat)
    return _counted(list_name, event.name, lambda count: count != 0)


def eligible(list_name: str, event: EventSpec, now: float):
    """The subscribers for whom `event` fires now, in address order: dependencies hold, and it is due.

    With `match: all` the statement is a chain of EXCEPTs over address-ordered ranges, which SQLite runs
    as a merge: the subscribers (or the counters of a dependency that needs one, each checked against
    the other such dependencies and the subscriber's state) minus the counters that fail a dependency
    holding at zero (`never`, `at_most`), minus those for whom the event is not due."""
    if event.match == "any":
        return _eligible_any(list_name, event, now)
    deps = [d for d in event.depends if not _always(d)]
    positive = [d for d in deps if _needs_counter(d)]
    if positive:
        first, *others = positive
        driver = event_counters.alias("driver")
        checks = []
        for i, dep in enumerate(others):
            other = event_counters.alias(f"also{i}")
            checks.append(exists().where(other.c.list_name == list_name, other.c.event == dep.event,
                                         other.c.address == driver.c.address, _predicate(dep, other.c.count)))
        lead = _counted(list_name, first.event, lambda count: _predicate(first, count), driver).where(
            *checks, _receiving_row(list_name, driver.c.address))
    else:
        lead = select(subscribers.c.address).where(subscribers.c.list_name == list_name, _receiving())
    failing = [_counted(list_name, d.event, lambda count, d=d: ~_predicate(d, count)) for d in deps
               if not _needs_counter(d)]
    chain = except_(lead, *failing, _not_due(list_name, event, now))
    return chain.order_by(chain.selected_columns.address)


def _eligible_any(list_name: str, event: EventSpec, now: float):
    """`match: any`: one statement over the subscribers, each dependency a correlated count."""
    deps = [_holds(list_name, d) for d in event.depends]
    holds = true() if not deps else or_(*deps)
    due = ~exists().where(event_counters.c.list_name == list_name, event_counters.c.event == event.name,
                          event_counters.c.address == subscribers.c.address,
                          event_counters.c.last_at > now - event.repeat if event.repeat
                          else event_counters.c.count != 0)
    return (select(subscribers.c.address).where(subscribers.c.list_name == list_name, _receiving(), holds, due)
            .order_by(subscribers.c.address))


def choose(conn: Connection, selection) -> int:
    """Fill this connection's `chosen` table with who a fire reaches (a statement, or addresses); how many."""
    conn.execute(_CREATE_CHOSEN)
    conn.execute(delete(chosen))
    if isinstance(selection, (list, tuple, set, frozenset)):
        addresses = sorted(set(selection))
        if addresses:
            conn.execute(insert(chosen), [{"address": a} for a in addresses])
        return len(addresses)
    done = conn.execute(insert(chosen).from_select(["address"], selection)).rowcount
    if done < 0:  # a driver that does not count the rows of INSERT ... SELECT
        done = conn.execute(select(func.count()).select_from(chosen)).scalar_one()
    return done


def chosen_addresses():
    """The chosen addresses as a column to select from (a template mail's recipients)."""
    return chosen.c.address


def record_chosen(conn: Connection, list_name: str, event: str, now: float) -> None:
    """One fire of `event` for each chosen address: counters counted up (or begun), and the fire logged."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    source = select(literal(list_name), chosen.c.address, literal(event), literal(1), literal(now)).where(true())
    upsert = dialect.insert(event_counters).from_select(["list_name", "address", "event", "count", "last_at"], source)
    conn.execute(upsert.on_conflict_do_update(index_elements=["list_name", "event", "address"], set_={
        "count": event_counters.c.count + 1, "last_at": upsert.excluded.last_at}))
    conn.execute(insert(event_fires).from_select(["list_name", "address", "event", "at"], select(
        literal(list_name), chosen.c.address, literal(event), literal(now))))


_EVENTS_OF = text(
    "WITH RECURSIVE seen(event) AS ("
    " SELECT min(event) FROM event_counters WHERE list_name = :list_name"
    " UNION ALL SELECT (SELECT min(c.event) FROM event_counters c WHERE c.list_name = :list_name"
    " AND c.event > seen.event) FROM seen WHERE seen.event IS NOT NULL)"
    " SELECT event FROM seen WHERE event IS NOT NULL")


def events_counted(conn: Connection, list_name: str) -> list[str]:
    """The events with counters on a list: one index seek each, however many subscribers they count."""
    return list(conn.execute(_EVENTS_OF, {"list_name": list_name}).scalars())


def counters(conn: Connection, list_name: str, addresses: Iterable[str] | None = None,
             events: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Fire counts by address and event. For some addresses, each (event, address) is one key seek: give
    `events` when known (a delivery batch does), else the list's counted events are looked up first."""
    query = select(event_counters.c.address, event_counters.c.event, event_counters.c.count).where(
        event_counters.c.list_name == list_name)
    if addresses is not None:
        addresses = list(addresses)
        if not addresses:
            return {}
        events = list(events) if events is not None else events_counted(conn, list_name)
        query = query.where(event_counters.c.event.in_(events), event_counters.c.address.in_(addresses))
    out: dict[str, dict[str, int]] = {}
    for address, event, count in conn.execute(query):
        out.setdefault(address, {})[event] = count
    return out


def receiving(list_name: str):
    """Who receives the list now (posts or digests), as a statement: the members events fire for."""
    return select(subscribers.c.address).where(subscribers.c.list_name == list_name, _receiving()) \
        .order_by(subscribers.c.address)


def receiving_count(conn: Connection, list_name: str) -> int:
    return conn.execute(select(func.count()).select_from(receiving(list_name).order_by(None).subquery())).scalar_one()


def receiving_among(conn: Connection, list_name: str, addresses: Iterable[str]) -> list[str]:
    return list(conn.execute(receiving(list_name).where(subscribers.c.address.in_(list(addresses)))).scalars())


def list_subscribers(conn: Connection, list_name: str) -> list[str]:
    """Who receives the list now (posts or digests): the members events fire for."""
    return list(conn.execute(receiving(list_name)).scalars())


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
