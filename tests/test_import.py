"""Bulk import and export of a list's subscribers: the roster format, the CLI on a real SQLite store, a crash
in the middle, PostgreSQL, and a post delivered by the engine to the imported members."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listkeeper.store import events as store_events
from listkeeper.store import imports, roster, subscribers
from listkeeper.store.tables import event_fires, subscription_changes

from .conftest import DOMAIN, pickup_routes, wait_for, write
from .test_serve import send
from .test_store import store  # noqa: F401 - the SQLite and PostgreSQL store fixture

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subscribers:
    - {address: chair@example.org, roles: [moderator, regular]}
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: copy}
spec:
  address: copy@example.org
  type: discussion
---
apiVersion: listkeeper/v1
kind: MemberDirectory
metadata: {name: team}
spec:
  source:
    csv: {path: team.csv}
  fields:
    team: {type: string}
---
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: devs}
spec:
  address: devs@example.org
  type: discussion
  members:
    directory: team
    query:
      - {field: team, is: dev}
"""

ROSTER = """\
address,name,roles,state,phone
Ann@Example.org,Ann Smith,regular,,555
bob@example.net,"Bob, Jr.",digest moderator,
not-an-address,Nobody,,
cy@example.com,,regular bogus,
ann@example.org,Ann again,,
chair@example.org,The Chair,moderator,
dee@example.com,Dee,regular,unsubscribed

eve@example.com,,"poster, regular",active
"""


def read(text: str) -> list:
    return list(roster.read(io.StringIO(text, newline="")))


# --- the roster format (pure) ---------------------------------------------------------------------------------

def test_read_rows_problems_and_notes_by_line():
    items = read(ROSTER)
    assert [str(i) for i in items if not isinstance(i, roster.Row)] == [
        "line 1: column(s) phone ignored (known: address, name, roles, state)",
        "line 4: 'not-an-address' is not an email address; row skipped",
        "line 5: cy@example.com: unknown role 'bogus' (roles: regular, digest, moderator, poster, allow, deny); "
        "row skipped",
        "line 6: ann@example.org is already on line 2; row skipped",
    ]
    assert [i for i in items if isinstance(i, roster.Row)] == [
        roster.Row(2, "ann@example.org", "Ann Smith", "regular", None),
        roster.Row(3, "bob@example.net", "Bob, Jr.", "digest,moderator", None),
        roster.Row(7, "chair@example.org", "The Chair", "moderator", None),
        roster.Row(8, "dee@example.com", "Dee", "regular", "unsubscribed"),
        roster.Row(10, "eve@example.com", None, "poster,regular", "active"),  # line 9 is blank
    ]


@pytest.mark.parametrize("line,expected", [
    ("a b@example.org", "'a b@example.org' is not an email address"),
    ("ann@example..", "'ann@example..' is not an email address"),
    ("x" * 250 + "@example.org", "is not an email address"),
    (",Ann", "no address"),
    ("ann@example.org,Ann,deny regular", "ann@example.org: role deny cannot be combined with others"),
    ("ann@example.org,Ann,,gone", "ann@example.org: unknown state 'gone' (active, unsubscribed or disabled)"),
    ("ann@example.org," + "n" * 201, "the name of ann@example.org is longer than 200 characters"),
    ('ann@example.org,"Ann\x07"', "the name of ann@example.org has control characters or is not UTF-8"),
])
def test_each_bad_line_is_named_and_skipped(line, expected):
    (problem,) = read(f"address,name,roles,state\n{line}\n")
    assert isinstance(problem, roster.Problem) and problem.line == 2
    assert expected in problem.message and problem.message.endswith("row skipped")


def test_line_numbers_count_physical_lines_and_bad_bytes_stay_on_their_line():
    data = (b"address,name\n"
            b'ann@example.org,"Ann\nSmith"\n'  # a quoted name over two lines (refused): the next row is on line 4
            b"b\xffb@example.org,Bob\n"
            b"cy@example.org,Cy \xe9\n"
            b"dee@example.org,D\xc3\xa9e\n")
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape", newline="")
    items = list(roster.read(text))
    assert [(type(i).__name__, i.line) for i in items] == [("Problem", 2), ("Problem", 4), ("Problem", 5), ("Row", 6)]
    assert "is not an email address" in items[1].message and "\\udcff" in items[1].message  # escaped, not raw
    assert items[2].message.startswith("the name of cy@example.org has control characters or is not UTF-8")
    assert items[3].name == "Dée"


def test_a_file_of_bare_addresses_and_header_aliases():
    assert read("ann@example.org\nbob@example.org,Bob\n") == [
        roster.Row(1, "ann@example.org", None, None, None), roster.Row(2, "bob@example.org", "Bob", None, None)]
    assert read("\ufeffE-Mail ,Roles\nann@example.org,Digest\n") == [
        roster.Row(2, "ann@example.org", None, "digest", None)]


@pytest.mark.parametrize("text,expected", [
    ("name,roles\nAnn,regular\n", "line 1: the header has no 'address' column"),
    ("address,name,address\n", "line 1: column 'address' appears twice in the header"),
    ("\nwho,what\n", "line 2: expected a header naming the columns"),
])
def test_an_unusable_header_stops_before_anything_is_read(text, expected):
    with pytest.raises(roster.RosterError, match=expected):
        read(text)


def test_write_is_what_read_reads():
    out = io.StringIO(newline="")
    rows = [("ann@example.org", "Smith, Ann", "moderator,regular", "active"), ("bo@example.org", None, "digest",
                                                                               "disabled")]
    assert roster.write(rows, out) == 2
    assert out.getvalue() == ("address,name,roles,state\nann@example.org,\"Smith, Ann\",moderator regular,active\n"
                              "bo@example.org,,digest,disabled\n")
    assert read(out.getvalue()) == [roster.Row(2, "ann@example.org", "Smith, Ann", "moderator,regular", "active"),
                                    roster.Row(3, "bo@example.org", None, "digest", "disabled")]


# --- what a chunk writes, decided from the rows and the store (pure) ------------------------------------------

def existing(address, name, roles, state, source):
    return {address: (address, name, roles, state, source)}


@pytest.mark.parametrize("row,have,counts,log,joined,note", [
    (roster.Row(2, "a@x.org", None, None, None), {}, dict(added=1), [], ["a@x.org"], None),
    (roster.Row(2, "a@x.org", None, "moderator", None), {}, dict(added=1), [("roles", "moderator")], [], None),
    (roster.Row(2, "a@x.org", None, None, "unsubscribed"), {}, dict(added=1),
     [("roles", "regular; unsubscribed")], [], None),
    (roster.Row(2, "a@x.org", "A", "regular", None), existing("a@x.org", "A", "regular", "active", "mail"),
     dict(unchanged=1), [], [], None),
    (roster.Row(2, "a@x.org", None, "moderator,regular", None), existing("a@x.org", "A", "regular", "active", "mail"),
     dict(updated=1), [("roles", "moderator,regular")], [], None),
    (roster.Row(2, "a@x.org", None, "regular", None), existing("a@x.org", None, "moderator", "active", "import"),
     dict(updated=1), [("roles", "regular")], ["a@x.org"], None),
    (roster.Row(2, "a@x.org", None, "moderator", None), existing("a@x.org", None, "regular", "active", "import"),
     dict(updated=1, left=1), [("roles", "moderator"), ("leave", None)], [], None),
    (roster.Row(2, "a@x.org", None, "digest", None), existing("a@x.org", None, "regular", "unsubscribed", "mail"),
     dict(updated=1), [("roles", "digest")], [], None),  # still unsubscribed: no join
    (roster.Row(2, "a@x.org", None, None, "active"), existing("a@x.org", None, "regular", "unsubscribed", "mail"),
     dict(unchanged=1), [], [], "line 2: a@x.org is unsubscribed in the store; the file's state 'active' is not "
                                "applied (a member's own choice wins)"),
    (roster.Row(2, "a@x.org", None, "digest", None), existing("a@x.org", None, "regular", "active", "manifest"),
     dict(skipped=1), [], [], "line 2: a@x.org comes from the manifest of l; change it there (row skipped)"),
    (roster.Row(2, "a@x.org", "A", "regular", None), existing("a@x.org", "A", "regular", "active", "manifest"),
     dict(unchanged=1), [], [], None),
])
def test_plan_chunk(row, have, counts, log, joined, note):
    report = imports.ImportReport()
    writes = imports.plan_chunk("l", [row], have, 5.0, report)
    for key in ("added", "updated", "unchanged", "skipped", "left"):
        assert getattr(report, key) == counts.get(key, 0), key
    assert [(action, detail) for _, _, action, _, detail, _ in writes.log] == log
    assert writes.joined == joined and report.joined == len(joined)
    assert [str(n) for n in report.notes] == ([note] if note else [])


# --- the CLI on a real SQLite store ----------------------------------------------------------------------------

@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    (tmp_path / "team.csv").write_text("email,team\nann@example.org,dev\n")
    return folder


@pytest.fixture
def cli(tmp_path: Path, conf: Path, store_url: str):
    env = {**os.environ, "LISTKEEPER_STORE": store_url}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    assert run("reconcile", "conf").returncode == 0
    return run


def store_db(store_url: str) -> sqlite3.Connection:
    return sqlite3.connect(store_url.removeprefix("sqlite:///"))


def test_import_names_bad_lines_and_a_second_run_changes_nothing(tmp_path, cli, store_url):
    (tmp_path / "roster.csv").write_text(ROSTER)
    first = cli("members", "import", "members", "roster.csv")
    assert first.returncode == 1, first.stderr  # some lines were not imported
    assert first.stdout.strip() == ("roster.csv into members: 4 added, 0 updated, 0 unchanged, 1 skipped (manifest), "
                                    "3 line(s) not imported; 3 joined, 0 left.")
    assert first.stderr.splitlines() == [
        "line 1: column(s) phone ignored (known: address, name, roles, state)",
        "line 4: 'not-an-address' is not an email address; row skipped",
        "line 5: cy@example.com: unknown role 'bogus' (roles: regular, digest, moderator, poster, allow, deny); "
        "row skipped",
        "line 6: ann@example.org is already on line 2; row skipped",
        "line 7: chair@example.org comes from the manifest of members; change it there (row skipped)",
    ]
    second = cli("members", "import", "members", "roster.csv")
    assert second.stdout.strip() == ("roster.csv into members: nothing changed (4 unchanged, 1 skipped (manifest), "
                                     "3 line(s) not imported).")
    shown = cli("members", "members").stdout.splitlines()
    assert shown[0] == "4 receiving member(s) of 5:"
    assert shown[1].split() == ["address", "roles", "receives", "state", "source"]  # a table's header
    assert [line.split() for line in shown[2:]] == [
        ["ann@example.org", "regular", "post", "active", "import"],
        ["bob@example.net", "digest,moderator", "digest", "active", "import"],
        ["chair@example.org", "moderator,regular", "post", "active", "manifest"],
        ["dee@example.com", "regular", "post", "unsubscribed", "import"],
        ["eve@example.com", "poster,regular", "post", "active", "import"]]
    # join fired once for each new receiving member (chair's came from reconcile), not again on the second run
    events = [line.split() for line in cli("events", "show", "members").stdout.splitlines()]
    assert events == [["subscriber", "join"], ["ann@example.org", "1"], ["bob@example.net", "1"],
                      ["chair@example.org", "1"], ["eve@example.com", "1"]]
    db = store_db(store_url)
    assert db.execute("SELECT address, action, detail FROM subscription_changes WHERE source = 'import' "
                      "ORDER BY address").fetchall() == [
        ("ann@example.org", "join", None), ("bob@example.net", "join", None),
        ("dee@example.com", "roles", "regular; unsubscribed"), ("eve@example.com", "join", None)]
    assert db.execute("SELECT count(*) FROM event_fires WHERE event = 'join' AND list_name = 'members'"
                      ).fetchone() == (4,)


def test_import_updates_roles_and_names_and_says_who_left(tmp_path, cli, store_url):
    (tmp_path / "a.csv").write_text("address,name,roles\nann@example.org,Ann,regular\nbob@example.org,Bob,regular\n")
    assert cli("members", "import", "members", "a.csv").returncode == 0
    (tmp_path / "b.csv").write_text("address,name,roles\nann@example.org,Ann Smith,moderator regular\n"
                                    "bob@example.org,,moderator\n")
    out = cli("members", "import", "members", "b.csv")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.strip() == "b.csv into members: 0 added, 2 updated, 0 unchanged; 0 joined, 1 left."
    db = store_db(store_url)
    assert db.execute("SELECT address, name, roles, receives, source FROM subscribers WHERE list_name = 'members' "
                      "AND source = 'import' ORDER BY address").fetchall() == [
        ("ann@example.org", "Ann Smith", "moderator,regular", "post", "import"),
        ("bob@example.org", "Bob", "moderator", "", "import")]  # an empty name cell keeps the name
    assert db.execute("SELECT address, action, detail FROM subscription_changes WHERE source = 'import' "
                      "AND action != 'join' ORDER BY id").fetchall() == [
        ("ann@example.org", "roles", "moderator,regular"), ("bob@example.org", "roles", "moderator"),
        ("bob@example.org", "leave", None)]
    again = cli("members", "import", "members", "b.csv")
    assert again.stdout.strip() == "b.csv into members: nothing changed (2 unchanged)."


def test_export_round_trip(tmp_path, cli):
    (tmp_path / "roster.csv").write_text(ROSTER)
    cli("members", "import", "members", "roster.csv")
    out = cli("members", "export", "members", "members.csv")
    assert out.returncode == 0 and out.stdout.strip() == "5 member(s) of members written to members.csv."
    exported = (tmp_path / "members.csv").read_text()
    assert exported == ("address,name,roles,state\n"
                        "ann@example.org,Ann Smith,regular,active\n"
                        "bob@example.net,\"Bob, Jr.\",digest moderator,active\n"
                        "chair@example.org,,moderator regular,active\n"
                        "dee@example.com,Dee,regular,unsubscribed\n"
                        "eve@example.com,,poster regular,active\n")
    assert cli("members", "export", "members").stdout == exported  # to stdout: the same bytes
    back = cli("members", "import", "members", "members.csv")
    assert back.returncode == 0 and back.stdout.strip() == "members.csv into members: nothing changed (5 unchanged)."
    into_copy = cli("members", "import", "copy", "members.csv")  # another list gets the same roster
    assert into_copy.stdout.strip() == ("members.csv into copy: 5 added, 0 updated, 0 unchanged; "
                                        "4 joined, 0 left.")
    assert cli("members", "export", "copy").stdout == exported
    assert not list(tmp_path.glob(".members.csv.*"))  # the export was written aside and renamed


def test_unknown_and_dynamic_lists_and_bad_files_are_refused(tmp_path, cli, store_url):
    (tmp_path / "roster.csv").write_text("address\nann@example.org\n")
    for args, expected in [
        (("import", "nosuch", "roster.csv"), "Error: no list 'nosuch' in the applied configuration"),
        (("export", "nosuch"), "Error: no list 'nosuch' in the applied configuration"),
        (("import", "devs", "roster.csv"), "Error: devs is a dynamic list: its regular members come from its query "
                                           "(spec.members), so it has no roster to import or export"),
        (("export", "devs"), "Error: devs is a dynamic list"),
        (("import", "members", "missing.csv"), "'missing.csv' does not exist"),
    ]:
        out = cli("members", *args)
        assert out.returncode != 0 and expected in out.stderr, (args, out.stderr)
    (tmp_path / "bad.csv").write_text("who,what\nann@example.org,x\n")
    out = cli("members", "import", "members", "bad.csv")
    assert out.returncode == 1 and "Error: bad.csv: line 1: expected a header naming the columns" in out.stderr
    assert store_db(store_url).execute("SELECT count(*) FROM subscribers WHERE source = 'import'").fetchone() == (0,)


# --- a crash in the middle --------------------------------------------------------------------------------------

def consistent(db: sqlite3.Connection) -> int:
    """Every imported member has its join logged and fired exactly once; returns how many there are."""
    members = db.execute("SELECT count(*) FROM subscribers WHERE source = 'import'").fetchone()[0]
    assert db.execute("SELECT count(*) FROM subscription_changes WHERE source = 'import' AND action = 'join'"
                      ).fetchone()[0] == members
    assert db.execute("SELECT count(*), coalesce(sum(count), 0) FROM event_counters WHERE list_name = 'members' "
                      "AND event = 'join' AND address != 'chair@example.org'").fetchone() == (members, members)
    assert db.execute("SELECT count(*) FROM event_fires WHERE list_name = 'members' AND event = 'join' "
                      "AND address != 'chair@example.org'").fetchone()[0] == members
    return members


def test_a_failing_chunk_writes_nothing_and_a_second_run_finishes(tmp_path, cli, store_url):
    from listkeeper.store import Store
    db = store_db(store_url)
    db.execute("CREATE TRIGGER fail AFTER INSERT ON subscription_changes WHEN NEW.address = 'm5@example.org' "
               "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    db.commit()
    text = "address\n" + "".join(f"m{i}@example.org\n" for i in range(10))
    s = Store.open(store_url)
    try:
        with pytest.raises(Exception, match="disk on fire"):
            imports.import_roster(s, "members", roster.read(io.StringIO(text)), chunk=4)
        assert consistent(db) == 4  # the first chunk; nothing of the second, not even its subscriber rows
        db.execute("DROP TRIGGER fail")
        db.commit()
        report = imports.import_roster(s, "members", roster.read(io.StringIO(text)), chunk=4)
    finally:
        s.close()
    assert (report.added, report.unchanged, report.joined) == (6, 4, 6)
    assert consistent(db) == 10


def test_killed_import_leaves_whole_chunks_and_a_rerun_finishes(tmp_path, cli, store_url):
    rows = 100_000
    with open(tmp_path / "big.csv", "w") as out:
        out.write("address,name\n")
        out.writelines(f"member{i}@d{i % 100}.example,Member {i}\n" for i in range(rows))
    env = {**os.environ, "LISTKEEPER_STORE": store_url}
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "members", "import", "members", "big.csv"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = store_db(store_url)
    deadline = time.monotonic() + 60
    try:
        while not db.execute("SELECT count(*) FROM subscribers WHERE source = 'import'").fetchone()[0]:
            assert time.monotonic() < deadline and proc.poll() is None, "no chunk was committed"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    committed = consistent(db)
    assert 0 < committed < rows and committed % imports.CHUNK == 0
    rerun = cli("members", "import", "members", "big.csv")
    assert rerun.returncode == 0
    assert rerun.stdout.strip() == (f"big.csv into members: {rows - committed} added, 0 updated, {committed} "
                                    f"unchanged; {rows - committed} joined, 0 left.")
    assert consistent(db) == rows


# --- PostgreSQL: the same statements -------------------------------------------------------------------------

def test_import_on_sqlite_and_postgresql(store):  # noqa: F811 - the fixture
    text = "address,roles\n" + "".join(f"m{i}@example.org,regular\n" for i in range(5))
    report = imports.import_roster(store, "l", roster.read(io.StringIO(text)), chunk=2)
    assert (report.added, report.joined, report.problems) == (5, 5, [])
    again = imports.import_roster(store, "l", roster.read(io.StringIO(text)), chunk=2)
    assert (again.changed, again.unchanged) == (0, 5)
    update = imports.import_roster(store, "l", roster.read(io.StringIO("address,roles\nm1@example.org,digest\n")))
    assert (update.updated, update.joined) == (1, 0)
    with store.engine.connect() as conn:
        assert subscribers.get(conn, "l", "m1@example.org").receives == "digest"
        assert store_events.counters(conn, "l") == {f"m{i}@example.org": {"join": 1} for i in range(5)}
        assert conn.execute(select(func.count()).select_from(event_fires)).scalar_one() == 5
        assert conn.execute(select(subscription_changes.c.action, func.count()).group_by(
            subscription_changes.c.action).order_by(subscription_changes.c.action)).all() == [("join", 5), ("roles", 1)]
        assert [row[0] for row in imports.exported(conn, "l")] == [f"m{i}@example.org" for i in range(5)]


# --- the engine delivers to imported members ---------------------------------------------------------------------

async def test_imported_members_receive_a_post(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    (tmp_path / "roster.csv").write_text(ROSTER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "listkeeper", "members", "import", "members", "roster.csv", cwd=tmp_path,
        env={**os.environ, "LISTKEEPER_STORE": store_url}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert b"4 added" in stdout
    _, reply = await send(engine.port, "eve@example.com", ["members@example.org"],  # an imported member posts
                          b"From: eve@example.com\r\nSubject: Hello\r\n\r\nHi all.\r\n")
    assert reply.startswith("2.0.0 Queued as ")
    delivered = await wait_for(lambda: sorted(p.name.split("-", 1)[1] for p in (tmp_path / "outbox").glob("*.eml"))
                               if len(list((tmp_path / "outbox").glob("*.eml"))) >= 3 else None)
    await asyncio.sleep(0.5)  # nobody else gets it: bob takes digests, dee unsubscribed
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "outbox").glob("*.eml")) == delivered == [
        "ann@example.org.eml", "chair@example.org.eml", "eve@example.com.eml"]
