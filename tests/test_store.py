"""The store on SQLite and on the PostgreSQL server of this machine: migrations and the queue."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from listkeeper.store import Store
from listkeeper.store.database import create_store_engine, is_current
from listkeeper.store import config as applied_config
from listkeeper.store import queue
from listkeeper.store.tables import POSTGRESQL_ONLY_INDEXES, metadata

# the fixture (SQLite and PostgreSQL) lives in conftest.py; other modules import it from here
from .conftest import PG_ADMIN, postgres_available, store  # noqa: F401


def test_migrations_match_the_tables(store):
    assert is_current(store.engine)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    if store.engine.dialect.name != "postgresql":  # indexes only PostgreSQL gets are not missing elsewhere
        diff = [d for d in diff if not (d[0] == "add_index" and d[1].name in POSTGRESQL_ONLY_INDEXES)]
    assert diff == []


def test_migrating_again_keeps_data(store):
    with store.engine.begin() as conn:
        applied_config.write_resources(conn, [applied_config.ResourceWrite("Domain", "d", {"a": 1}, "h", "f:1:1")],
                                       [], 1.0)
    again = Store.open(store.engine.url.render_as_string(hide_password=False))
    with again.engine.connect() as conn:
        assert applied_config.generation(conn) == 1
        assert applied_config.applied_resources(conn)[("Domain", "d")].spec == {"a": 1}
    again.close()


def test_spool_claim_and_record(store):
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 3, (
        queue.PostRecord("l", "queued", "member", b"copy", "l-bounces@x.org", ("b@y.org", "c@y.org")),
    ))
    with store.engine.begin() as conn:
        (inbound_id,) = queue.spool(conn, [record], 1000.0)
    with store.engine.begin() as conn:
        due = queue.claim_due(conn, 1000.0, 10, lease=60)
        assert [d.recipient for d in due] == ["b@y.org", "c@y.org"]
        assert queue.claim_due(conn, 1000.0, 10, lease=60) == []  # claimed ones are not due
        data = queue.message_data(conn, [d.message_id for d in due])
        assert list(data.values()) == [b"copy"]
    with store.engine.begin() as conn:
        queue.record_outcomes(conn, [queue.Outcome(due[0].delivery_id, "delivered", "pickup"),
                                     queue.Outcome(due[1].delivery_id, "deferred", "relay", "451 busy", 1060.0)],
                              1001.0)
        assert queue.queue_counts(conn) == {"delivered": 1, "deferred": 1}
        assert queue.claim_due(conn, 1059.0, 10, lease=60) == []
        assert [d.attempts for d in queue.claim_due(conn, 1060.0, 10, lease=60)] == [1]


def test_a_claimed_delivery_names_the_smtp_queue_id_of_its_post(store):
    """What `delivery.attempt` logs: the accepted message a list copy came from; none for the engine's own mail."""
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 1, (
        queue.PostRecord("l", "queued", "member", b"copy", "", ("b@y.org",)),))
    with store.engine.begin() as conn:
        (inbound_id,) = queue.spool(conn, [record], 1000.0)
        (report_id,) = queue.insert_posts(conn, [(None, 1, queue.PostRecord("", "queued", "report", b"report", "",
                                                                            ("pm@x.org",)))], 1000.0)
        due = queue.claim_due(conn, 1000.0, 10, lease=60)
    assert {(d.recipient, d.queue_id) for d in due} == {("b@y.org", inbound_id), ("pm@x.org", None)}
    assert report_id in {d.message_id for d in due}


def _leases_age(conn, seconds: float) -> None:
    """The lease clock moves on `seconds`. On SQLite it is the node's: the `now` each call is given. On
    PostgreSQL it is the server's, which a test cannot set: the leases are moved back instead."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("update deliveries set lease_until = lease_until - :s"), {"s": seconds})


def test_expired_leases_are_released(store):
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 1, (
        queue.PostRecord("l", "queued", "member", b"copy", "", ("b@y.org",)),))
    with store.engine.begin() as conn:
        queue.spool(conn, [record], 1000.0)
        queue.claim_due(conn, 1000.0, 10, lease=60)
        _leases_age(conn, 30)
        assert queue.release_expired(conn, 1030.0) == 0
        _leases_age(conn, 31)
        assert queue.release_expired(conn, 1061.0) == 1
        assert len(queue.claim_due(conn, 1061.0, 10, lease=60)) == 1


def _spool_five(store) -> None:
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 1, (
        queue.PostRecord("l", "queued", "member", b"copy", "", tuple(f"r{i}@y.org" for i in range(5))),))
    with store.engine.begin() as conn:
        queue.spool(conn, [record], 1000.0)


def test_two_nodes_claim_different_deliveries(store):
    """PostgreSQL: a node's claim skips the rows another node's open claim has locked (SKIP LOCKED), and
    does not wait for it. SQLite has one writer at a time: the claims follow each other."""
    _spool_five(store)
    shared = store.engine.dialect.name == "postgresql"
    one = store.engine.connect()
    two = store.engine.connect()
    try:
        first = queue.claim_due(one, 1000.0, 3, 60, "mx1")
        if not shared:
            one.commit()
        second = queue.claim_due(two, 1000.0, 10, 60, "mx2")  # on PostgreSQL while mx1's claim is open
        one.commit()
        two.commit()
    finally:
        one.close()
        two.close()
    assert len(first) == 3 and len(second) == 2
    assert {d.recipient for d in first} | {d.recipient for d in second} == {f"r{i}@y.org" for i in range(5)}
    with store.engine.connect() as conn:
        owners = conn.execute(text("select claimed_by, count(*) from deliveries group by claimed_by")).all()
    assert dict(owners) == {"mx1": 3, "mx2": 2}


def test_a_node_releases_only_its_own_and_expired_leases(store):
    _spool_five(store)
    with store.engine.begin() as conn:
        mine = queue.claim_due(conn, 1000.0, 2, 60, "mx1")
        theirs = queue.claim_due(conn, 1000.0, 2, 60, "mx2")
        assert queue.release_own(conn, "mx1", 1001.0) == 2  # mx1 started again
        assert {d.delivery_id for d in queue.claim_due(conn, 1001.0, 10, 60, "mx1")} == \
            {d.delivery_id for d in mine} | {5}  # its own and the unclaimed one; never mx2's
        _leases_age(conn, 50)
        assert queue.renew_leases(conn, "mx2", 1050.0, lease=50) == 2  # mx2 is alive and renews
        _leases_age(conn, 30)
        assert queue.release_expired(conn, 1080.0) == 3  # mx1 stopped renewing; mx2's leases hold
        assert {d.delivery_id for d in queue.claim_due(conn, 1080.0, 10, 60, "mx2")} == \
            {d.delivery_id for d in mine} | {5}
        assert all(d.delivery_id not in {t.delivery_id for t in theirs} for d in mine)


def test_an_outcome_counts_only_while_the_node_holds_the_delivery(store):
    _spool_five(store)
    with store.engine.begin() as conn:
        (due,) = queue.claim_due(conn, 1000.0, 1, 60, "mx1")
        _leases_age(conn, 61)
        queue.release_expired(conn, 1061.0)  # mx1 stalled past its lease ...
        (again,) = queue.claim_due(conn, 1061.0, 1, 60, "mx2")  # ... and mx2 took the delivery over
        assert again.delivery_id == due.delivery_id
        queue.record_outcomes(conn, [queue.Outcome(due.delivery_id, "deferred", "relay", "451", 2000.0)],
                              1062.0, owner="mx1")  # mx1's late outcome: not its delivery any more
        assert queue.delivery(conn, due.delivery_id)["state"] == "sending"
        queue.record_outcomes(conn, [queue.Outcome(due.delivery_id, "delivered", "pickup")], 1063.0, owner="mx2")
        row = queue.delivery(conn, due.delivery_id)
        assert (row["state"], row["attempts"], row["claimed_by"]) == ("delivered", 1, "mx2")


@pytest.mark.parametrize("given", ["postgresql://postgres@127.0.0.1/lk", "postgresql+psycopg://u@db/lk"])
def test_a_plain_postgresql_url_means_psycopg_3(given):
    engine = create_store_engine(given)  # connects only when used
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    engine.dispose()


@pytest.mark.parametrize("other", ["renewal", "release"])
def test_lease_upkeep_never_deadlocks_with_outcome_writes(store, other):
    """PostgreSQL: a node renews its leases (one thread) while it writes outcomes of some of the same
    deliveries (another); or, its leases expired, another node releases them while it writes its late
    outcomes. The UPDATEs lock rows in different orders; renewal and release must not wait for rows an
    outcome write holds (they are leaving 'sending'), or the server aborts one as a deadlock."""
    import random
    import threading
    import time

    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    record = queue.InboundRecord("a@x.org", ("l@x.org",), b"raw", 1, (
        queue.PostRecord("l", "queued", "member", b"copy", "", tuple(f"r{i}@y.org" for i in range(3000))),))
    with store.engine.begin() as conn:
        queue.spool(conn, [record], 1000.0)
        ids = [d.delivery_id for d in queue.claim_due(conn, 1000.0, 5000, 60, "mx1")]
    # live leases (on the server's clock) for the renewal, long expired ones for the release
    leased = "extract(epoch from statement_timestamp()) + 60" if other == "renewal" else "1060"
    if other == "release":
        with store.engine.begin() as conn:
            conn.execute(text(f"update deliveries set lease_until = {leased}"))
    errors: list[str] = []
    stop = time.monotonic() + 8.0

    def renew():
        while time.monotonic() < stop and not errors:
            try:
                with store.engine.begin() as conn:
                    if other == "renewal":
                        assert queue.renew_leases(conn, "mx1", 1000.0, lease=100) > 0
                    else:  # another node, past the leases
                        queue.release_expired(conn, 2000.0)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{other}: {type(exc).__name__}: {exc}")

    def write_outcomes():
        rng = random.Random(7)
        while time.monotonic() < stop and not errors:
            batch = rng.sample(ids, 1000)  # outcomes come in the order sends finish
            try:
                with store.engine.begin() as conn:
                    queue.record_outcomes(conn, [queue.Outcome(i, "delivered", "pickup") for i in batch],
                                          1000.0, owner="mx1")
                with store.engine.begin() as conn:  # back to sending, for the next round
                    conn.execute(text(f"update deliveries set state = 'sending', lease_until = {leased} "
                                      f"where id in ({','.join(map(str, sorted(batch)))})"))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"outcomes: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=renew), threading.Thread(target=write_outcomes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_a_claim_tags_verp_return_paths_with_one_key(store):
    from listkeeper.delivery.verp import signed
    from listkeeper.manifests.addresses import sign_verp
    from listkeeper.store.signing import verp_key

    copy = queue.PostRecord("l", "queued", "a copy", b"copy", "l-bounces@x.org", ("a+b=c@y.org", "d@y.org"), verp=True)
    notice = queue.PostRecord("l", "queued", "a notice", b"notice", "l-bounces@x.org", ("e@y.org",))
    with store.engine.begin() as conn:
        queue.insert_posts(conn, [(None, 1, copy), (None, 1, notice)], 1000.0)
    with store.engine.begin() as conn:  # the first claim makes the key, in its own transaction
        first, second, plain = signed(conn, queue.claim_due(conn, 1000.0, 10, lease=60))
        key = verp_key(conn)
        queue.record_outcomes(conn, [queue.Outcome(d.delivery_id, "delivered", "smtp") for d in (first, second, plain)],
                              1000.0)
    with store.engine.begin() as conn:
        assert verp_key(conn) == key  # made once
    assert first.return_path == sign_verp(key, "l-bounces@x.org", "a+b=c@y.org")
    assert second.return_path == sign_verp(key, "l-bounces@x.org", "d@y.org") != "l-bounces+d=y.org@x.org"
    assert plain.return_path == "l-bounces@x.org"  # mail queued with the plain address leaves untagged


def _server_clock_store(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one node: its clock is the only one")
    _spool_five(store)


def test_a_node_whose_clock_runs_ahead_takes_no_live_lease(store):
    """PostgreSQL: leases are set and compared by the server's clock, so a node whose clock runs ten
    minutes ahead (NTP broken) sees another node's live leases as live, and does not send them again;
    and a node whose clock runs behind renews its leases into the future, not into the past."""
    import time

    _server_clock_store(store)
    with store.engine.begin() as conn:
        mine = queue.claim_due(conn, time.time(), 3, 60, "mx1")
    with store.engine.begin() as conn:  # mx2, its clock ten minutes ahead
        assert queue.release_expired(conn, time.time() + 600) == 0
        assert len(queue.claim_due(conn, time.time() + 600, 10, 60, "mx2")) == 2  # only the unclaimed ones
    with store.engine.begin() as conn:  # mx1, its clock ten minutes behind, renews
        assert queue.renew_leases(conn, "mx1", time.time() - 600, lease=60) == 3
    with store.engine.begin() as conn:  # mx2 still leaves them alone
        assert queue.release_expired(conn, time.time() + 600) == 0
        owners = conn.execute(text("select claimed_by, count(*) from deliveries where state = 'sending' "
                                   "group by claimed_by")).all()
    assert dict(owners) == {"mx1": 3, "mx2": 2}
    assert all(queue.delivery(store.engine.connect(), d.delivery_id)["state"] == "sending" for d in mine)


def test_a_lease_expired_on_the_server_clock_is_taken_over_whatever_the_nodes_clock(store):
    """PostgreSQL: a lease that ran out by the server's clock is released and claimed again, even by a
    node whose clock runs ten minutes behind."""
    import time

    _server_clock_store(store)
    with store.engine.begin() as conn:
        queue.claim_due(conn, time.time(), 2, 0.3, "mx1")  # mx1 then died: no renewal
    time.sleep(0.5)
    with store.engine.begin() as conn:
        assert queue.renew_leases(conn, "mx1", time.time() + 600, lease=60) == 0  # too late, even ahead
        assert queue.release_expired(conn, time.time() - 600) == 2
        claimed = queue.claim_due(conn, time.time() + 1, 10, 60, "mx2")
    assert len(claimed) == 5 and {d.attempts for d in claimed} == {0}
