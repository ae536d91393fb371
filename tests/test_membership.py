"""Dynamic membership: every operator on SQLite and on PostgreSQL, safe SQL, validation, post time."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from listkeeper.manifests import ManifestErrors, load_manifests
from listkeeper.manifests.directory import Criterion, MemberDirectorySpec, resolve_date
from listkeeper.store import directory

from .conftest import DOMAIN, pickup_routes, wait_for, write
from .test_serve import send
from .test_store import PG_ADMIN, postgres_available

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
SCHEMA = (Path(__file__).parent.parent / "examples" / "directory" / "schema.sql").read_text()
FIELDS = {"name": {"type": "string"}, "role": {"type": "enum", "values": ["board", "staff"]},
          "company": {"type": "string"}, "company_membership": {"type": "enum", "values": ["full", "associate"]},
          "country": {"type": "string"}, "joined": {"type": "date"}, "receive_email": {"type": "bool"}}


def statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


@pytest.fixture(params=["sqlite", "postgresql"])
def directory_url(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "directory.db"
        sqlite3.connect(path).executescript(SCHEMA)
        yield f"sqlite:///{path}"
        return
    reason = postgres_available()
    if reason:
        pytest.skip(f"PostgreSQL directory tests skipped: {reason}")
    name = f"lk_dir_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = create_engine(url)
    with engine.begin() as conn:
        for stmt in statements(SCHEMA.replace("BOOLEAN NOT NULL DEFAULT 1", "BOOLEAN NOT NULL DEFAULT true")
                               .replace("'2019-03-01', 1)", "'2019-03-01', true)")
                               .replace("'2024-06-15', 0)", "'2024-06-15', false)")
                               .replace("'2021-01-10', 1)", "'2021-01-10', true)")
                               .replace("'2022-09-30', 1)", "'2022-09-30', true)")):
            conn.execute(text(stmt))
    engine.dispose()
    yield url
    directory._engines.clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def spec_for(url: str) -> MemberDirectorySpec:
    return MemberDirectorySpec.model_validate({"source": {"sql": {"url": url, "table": "member_view"}},
                                               "alternate_addresses": ["email_alt"], "fields": FIELDS})


def select(url: str, *criteria: dict) -> list[str]:
    query = [Criterion.model_validate(c) for c in criteria]
    return sorted(directory.stream(spec_for(url), query, NOW))


ANN, BO, CY, DI = "ann@acme.example", "bo@acme.example", "cy@globex.example", "di@initech.example"
CASES = [
    ([], [ANN, BO, CY, DI]),  # an empty query selects everyone
    ([{"field": "role", "is": "board"}], [ANN, DI]),
    ([{"field": "company_membership", "is": ["full", "associate"]}], [ANN, BO, CY, DI]),
    ([{"field": "company", "is_not": ["Acme", "Globex"]}], [DI]),
    ([{"field": "company", "is": "ACME"}], [ANN, BO]),  # string matches ignore case
    ([{"field": "name", "contains": "y"}], [CY]),
    ([{"field": "company", "not_contains": "ex"}], [ANN, BO, DI]),
    ([{"field": "name", "contains": "%"}], []),  # a LIKE wildcard is a literal
    ([{"field": "joined", "before": "2021-01-10"}], [ANN]),
    ([{"field": "joined", "after": "2022-09-30"}], [BO]),
    ([{"field": "joined", "on": "2021-01-10"}], [CY]),
    ([{"field": "joined", "before": "now-3y"}], [ANN, CY, DI]),  # before 2023-11-23
    ([{"field": "joined", "after": "now-30m"}], [BO]),  # after 2024-05-23
    ([{"field": "receive_email", "is": True}], [ANN, CY, DI]),
    ([{"field": "receive_email", "is": False}], [BO]),
    ([{"field": "role", "is": "staff"}, {"field": "receive_email", "is": True}], [CY]),  # criteria are ANDed
]


@pytest.mark.parametrize("criteria,expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_operators(directory_url, criteria, expected):
    assert select(directory_url, *criteria) == sorted(expected)


@pytest.mark.parametrize("value", ["x' OR '1'='1", "Acme'; DROP TABLE users; --", "' OR 1=1 --", "%' OR '%'='"])
def test_values_are_never_spliced_into_sql(directory_url, value):
    assert select(directory_url, {"field": "company", "is": value}) == []
    assert select(directory_url, {"field": "company", "contains": value}) == []
    assert len(select(directory_url)) == 4  # and the tables are all still there


def test_one_parametrised_statement(directory_url):
    stmt = directory.selection(spec_for(directory_url),
                               [Criterion.model_validate({"field": "company", "is": "x' OR '1'='1"})], NOW)
    sql = str(stmt.compile(dialect=create_engine(directory_url).dialect))
    assert "x' OR" not in sql and "'1'='1" not in sql


def test_alternate_address_may_post(directory_url):
    spec = spec_for(directory_url)
    board = [Criterion.model_validate({"field": "role", "is": "board"})]
    assert directory.poster_addresses(spec, board, frozenset({"ann.home@example.net"}), NOW)
    assert not directory.poster_addresses(spec, board, frozenset({"cy@globex.example"}), NOW)


@pytest.mark.parametrize("value,expected", [
    ("2024-02-29", "2024-02-29"), ("now", "2026-11-23"), ("now-30d", "2026-10-24"), ("now+3m", "2027-02-23"),
    ("now+1y", "2027-11-23"), ("now-2w", "2026-11-09"),
])
def test_relative_dates(value, expected):
    assert resolve_date(value, NOW).isoformat() == expected


DIRECTORY_YAML = """
apiVersion: listkeeper/v1
kind: MemberDirectory
metadata: {name: members}
spec:
  source:
    sql: {url: "URL", table: member_view}
  alternate_addresses: [email_alt]
  fields:
    name: {type: string}
    role: {type: enum, values: [board, staff]}
    joined: {type: date}
    receive_email: {type: bool}
"""


def dynamic_list(query: str, name: str = "board", address: str = "board@example.org", kind: str = "discussion") -> str:
    return f"""
apiVersion: listkeeper/v1
kind: MailingList
metadata: {{name: {name}}}
spec:
  address: {address}
  type: {kind}
  members:
    directory: members
    query:
{query}"""


@pytest.mark.parametrize("query,expected", [
    ("      - {field: shoe_size, is: 42}\n", "spec.members.query[0].field: unknown field 'shoe_size'"),
    ("      - {field: role, before: now}\n", "spec.members.query[0].before: operator before does not fit an enum"),
    ("      - {field: role, is: [board, chair]}\n", "spec.members.query[0].is: 'chair' is not a value of role"),
    ("      - {field: joined, after: last-tuesday}\n", "spec.members.query[0].after: 'last-tuesday' is not a date"),
    ("      - {field: receive_email, is: 'yes'}\n", "spec.members.query[0].is: receive_email is a bool"),
    ("      - {field: role, is: board, is_not: staff}\n", "spec.members.query[0]: give exactly one operator"),
])
def test_query_errors_name_file_line_column(tmp_path, query, expected):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "dir.yaml", DIRECTORY_YAML.replace("URL", "sqlite:///x.db"))
    write(conf, "list.yaml", dynamic_list(query))
    with pytest.raises(ManifestErrors) as info:
        load_manifests([conf])
    lines = [str(e) for e in info.value.errors]
    assert any("list.yaml:10:" in line and expected in line for line in lines), lines


def test_regular_subscribers_cannot_be_added_by_hand(tmp_path):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "dir.yaml", DIRECTORY_YAML.replace("URL", "sqlite:///x.db"))
    write(conf, "list.yaml", dynamic_list("      - {field: role, is: board}\n")
          + "  subscribers:\n    - address: someone@example.org\n")
    with pytest.raises(ManifestErrors) as info:
        load_manifests([conf])
    assert "a dynamic list's regular members come from its query" in str(info.value)


@pytest.fixture
def dynamic_conf(tmp_path):
    path = tmp_path / "directory.db"
    sqlite3.connect(path).executescript(SCHEMA)
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "dir.yaml", DIRECTORY_YAML.replace("URL", f"sqlite:///{path}"))
    write(conf, "list.yaml", dynamic_list("      - {field: role, is: board}\n"))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return conf


async def test_post_is_fanned_out_to_the_selection_at_post_time(tmp_path, dynamic_conf, engine_for, store_url):
    engine = await engine_for(dynamic_conf)
    message = b"From: ann.home@example.net\r\nSubject: Board\r\n\r\nHi board.\r\n"
    await send(engine.port, "ann.home@example.net", ["board@example.org"], message)  # an alternate address
    files = await wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) == 2
                           and sorted(p.name.split("-", 1)[1] for p in (tmp_path / "outbox").glob("*.eml")))
    assert files == ["ann@acme.example.eml", "di@initech.example.eml"]
    # the directory changes; the next post reaches whoever is selected then
    db = sqlite3.connect(tmp_path / "directory.db")
    db.execute("update users set role='board' where email='cy@globex.example'")
    db.commit()
    db.close()
    await send(engine.port, "di@initech.example", ["board@example.org"],
               b"From: di@initech.example\r\nSubject: Again\r\n\r\nx\r\n")
    await wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) == 5)
    env = {**os.environ, "LISTKEEPER_STORE": store_url}
    shown = subprocess.run([sys.executable, "-m", "listkeeper", "members", "board"], capture_output=True,
                           text=True, env=env)
    assert "3 member(s) selected for post" in shown.stdout and "cy@globex.example" in shown.stdout
    _, reply = await send(engine.port, "bo@acme.example", ["board@example.org"],  # bo is staff: not selected,
                          b"From: bo@acme.example\r\nSubject: me\r\n\r\nx\r\n")  # so not a member: held
    assert reply.endswith("held for moderation by board")
    # asking to subscribe by mail gets a reply that explains why nothing changed
    await send(engine.port, "bo@acme.example", ["board-request@example.org"],
               b"From: bo@acme.example\r\nSubject: subscribe\r\n\r\nsubscribe\r\n")
    answer = await wait_for(lambda: list((tmp_path / "outbox").glob("*bo@acme.example.eml")))
    assert b"chosen by the organisation's member\r\ndirectory" in answer[0].read_bytes()


def test_members_preview_and_plan_impact(tmp_path, dynamic_conf):
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "listkeeper", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path)

    assert run("reconcile", "conf").returncode == 0
    preview = run("members", "board", "--preview").stdout
    assert preview.splitlines() == ["2 member(s) selected now:", "  ann@acme.example", "  di@initech.example"]
    assert "No post has been distributed to board yet" in run("members", "board").stdout
    write(dynamic_conf, "list.yaml", dynamic_list("      - {field: receive_email, is: true}\n"))
    dry = run("reconcile", "conf", "--dry-run")
    assert ("MailingList/board: selected members 2 → 3 (+1 join, -0 leave); joins: cy@globex.example"
            in dry.stdout), dry.stdout
    import json
    doc = json.loads(run("reconcile", "conf", "--dry-run", "--output", "json").stdout)
    (impact,) = [i for i in doc["impact"] if i["name"] == "board"]
    assert impact["counts"] == {"selected_before": 2, "selected_after": 3}
    assert impact["examples"] == {"joins": ["cy@globex.example"], "leaves": []}


def test_dry_run_over_a_missing_directory_file_writes_nothing(tmp_path, dynamic_conf):
    """A plan reads: a missing SQLite directory is one line in the plan, and no empty file is left behind."""
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"}
    (tmp_path / "directory.db").unlink()
    dry = subprocess.run([sys.executable, "-m", "listkeeper", "reconcile", "conf", "--dry-run"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    line = next(line for line in dry.stdout.splitlines() if "MailingList/board:" in line)
    assert line.strip() == ("MailingList/board: selected members unknown: cannot read the member directory "
                            f"(sqlite:///{tmp_path}/directory.db): unable to open database file")
    assert not (tmp_path / "directory.db").exists()


def test_directories_are_opened_read_only(tmp_path):
    """The engine only reads a directory: a missing file stays missing, an existing one cannot be written."""
    missing = spec_for(f"sqlite:///{tmp_path}/missing.db")
    with pytest.raises(OperationalError, match="unable to open database file"):
        list(directory.stream(missing, [], NOW))
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "directory.db"
    sqlite3.connect(path).executescript(SCHEMA)
    spec = spec_for(f"sqlite:///{path}")
    assert directory.count(spec, [], NOW) == 4
    with pytest.raises(OperationalError, match="readonly database"), directory.engine_of(spec).begin() as conn:
        conn.execute(text("delete from users"))


def test_csv_directory(tmp_path):
    csv_path = tmp_path / "members.csv"
    csv_path.write_text("email,team,since,receive_email\nA@x.org,dev,2020-01-01,true\nb@x.org,dev,2023-05-01,false\n"
                        "c@x.org,ops,2021-07-12,true\n")
    spec = MemberDirectorySpec.model_validate({"source": {"csv": {"path": str(csv_path)}}, "fields": {
        "team": {"type": "string"}, "since": {"type": "date"}, "receive_email": {"type": "bool"}}})
    query = [Criterion.model_validate({"field": "team", "is": "dev"}),
             Criterion.model_validate({"field": "receive_email", "is": True})]
    assert list(directory.stream(spec, query, NOW)) == ["a@x.org"]
    assert directory.count(spec, [Criterion.model_validate({"field": "since", "after": "2021-01-01"})], NOW) == 2
