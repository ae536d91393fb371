"""The reconcile contract end to end: JSON plans, runtime impact, --against, saved plans, guards, drift."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from listkeeper.reconcile.desired import spec_hash
from listkeeper.store import Store
from listkeeper.store import config as applied_config
from listkeeper.store import queue

from .conftest import DOMAIN, REPO, write

CLI = [sys.executable, "-m", "listkeeper"]

LIST = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: members}
spec:
  address: members@example.org
  type: discussion
  subject_prefix: "[m]"
  subscribers:
    - address: alice@example.org
    - address: bob@example.net
"""
ROUTES = """
apiVersion: listkeeper/v1
kind: Relay
metadata: {name: smarthost}
spec: {host: smtp.example.net, auth: {username: u, password: {env: SMARTHOST_PASSWORD}}}
---
apiVersion: listkeeper/v1
kind: RoutingTable
metadata: {name: default}
spec:
  routes:
    - match: "example.org"
      transport: pickup
      folder: outbox
    - match: "*"
      transport: relay
      relay: smarthost
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "members.yaml", LIST)
    write(folder, "routes.yaml", ROUTES)
    return folder


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/var/lk.db"


def run(tmp_path: Path, *args: str, store: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LISTKEEPER_STORE"}
    if store:
        environ["LISTKEEPER_STORE"] = url(tmp_path)
    environ.update(env or {})
    return subprocess.run(CLI + list(args), cwd=tmp_path, capture_output=True, text=True, env=environ)


def spool_runtime_data(tmp_path: Path, list_name: str = "members") -> None:
    """A queued post to two subscribers and a held post, as the engine would store them."""
    store = Store.open(url(tmp_path))
    with store.engine.begin() as conn:
        queue.spool(conn, [
            queue.InboundRecord("alice@example.org", ("members@example.org",), b"m1", 1, (
                queue.PostRecord(list_name, "queued", "member", b"c1", "members-bounces@example.org",
                                 ("alice@example.org", "bob@example.net")),)),
            queue.InboundRecord("eve@example.org", ("members@example.org",), b"m2", 1, (
                queue.PostRecord(list_name, "held", "moderated", b"c2", "members-bounces@example.org", ()),)),
        ], store.now())
    store.close()


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "var" / "lk.db")


def test_json_plan_is_documented_and_stable(tmp_path, conf):
    result = run(tmp_path, "reconcile", "conf", "--dry-run", "--output", "json", "--detailed-exitcode")
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format_version"] == "1.0" and doc["base_generation"] == 0
    assert {(c["kind"], c["name"]): c["actions"] for c in doc["resource_changes"]} == {
        ("Domain", "example-org"): ["create"], ("MailingList", "members"): ["create"],
        ("Relay", "smarthost"): ["create"], ("RoutingTable", "default"): ["create"]}
    assert doc["drift"] == [] and doc["summary"]["create"] == 4
    relay = next(c for c in doc["resource_changes"] if c["kind"] == "Relay")
    assert relay["after"]["auth"]["password"] == {"env": "SMARTHOST_PASSWORD"}


def test_deleting_a_list_names_its_runtime_data_and_keeps_it_restorable(tmp_path, conf):
    assert run(tmp_path, "reconcile", "conf").returncode == 0
    spool_runtime_data(tmp_path)
    (conf / "members.yaml").unlink()
    text = run(tmp_path, "reconcile", "conf", "--dry-run", "--prune").stdout
    assert ("MailingList/members: deletes (restorable: soft delete for the retention period): "
            "2 subscribers, 2 queued deliveries, 1 held post") in text
    doc = json.loads(run(tmp_path, "reconcile", "conf", "--dry-run", "--prune", "--output", "json").stdout)
    (impact,) = [i for i in doc["impact"] if i["name"] == "members"]
    assert impact["counts"] == {"subscribers": 2, "queued_deliveries": 2, "held_posts": 1}

    assert "Applied" in run(tmp_path, "reconcile", "conf", "--prune").stdout
    conn = db(tmp_path)
    assert conn.execute("select count(*) from messages where list_name='members'").fetchone() == (2,)
    assert conn.execute("select deleted_at is not null from resources where name='members'").fetchone() == (1,)
    conn.close()
    assert run(tmp_path, "reconcile", "conf", "--detailed-exitcode").returncode == 0

    write(conf, "members.yaml", LIST)  # re-created: the data comes back with it
    restored = run(tmp_path, "reconcile", "conf")
    assert "+ MailingList/members will be created, restoring its runtime data" in restored.stdout
    conn = db(tmp_path)
    assert conn.execute("select deleted_at from resources where name='members'").fetchone() == (None,)
    assert conn.execute("select count(*) from messages where list_name='members'").fetchone() == (2,)
    conn.close()


def test_runtime_data_is_purged_only_after_the_retention_period(tmp_path, conf):
    run(tmp_path, "reconcile", "conf")
    spool_runtime_data(tmp_path)
    (conf / "members.yaml").unlink()
    run(tmp_path, "reconcile", "conf", "--prune")
    run(tmp_path, "reconcile", "conf")  # retention 30 days: kept
    assert db(tmp_path).execute("select count(*) from messages where list_name='members'").fetchone() == (2,)
    dry = run(tmp_path, "reconcile", "conf", "--dry-run", "--retention-days", "0")
    assert "MailingList/members: deleted 0 days ago; the retention period is over" in dry.stdout
    run(tmp_path, "reconcile", "conf", "--retention-days", "0")
    assert db(tmp_path).execute("select count(*) from messages where list_name='members'").fetchone() == (0,)


def test_route_change_names_the_deliveries_it_reroutes(tmp_path, conf):
    run(tmp_path, "reconcile", "conf")
    spool_runtime_data(tmp_path)
    write(conf, "routes.yaml", ROUTES.replace('"example.org"', '"*.example.org"'))
    text = run(tmp_path, "reconcile", "conf", "--dry-run").stdout
    assert ("RoutingTable/default: reroutes 1 queued delivery; rerouted: "
            "example.org: pickup:outbox → relay:smarthost") in text


def test_rename_keeps_subscribers_and_runtime_data(tmp_path, conf):
    run(tmp_path, "reconcile", "conf")
    spool_runtime_data(tmp_path)
    write(conf, "members.yaml", LIST.replace("metadata: {name: members}",
                                             "metadata: {name: everyone, renamedFrom: members}"))
    dry = run(tmp_path, "reconcile", "conf", "--dry-run", "--prune")
    assert "~ MailingList/everyone will be renamed from members" in dry.stdout
    assert "Plan: 0 to create, 1 to update, 0 to delete." in dry.stdout
    run(tmp_path, "reconcile", "conf", "--prune")
    conn = db(tmp_path)
    assert conn.execute("select name from resources where kind='MailingList'").fetchall() == [("everyone",)]
    assert conn.execute("select count(*) from messages where list_name='everyone'").fetchone() == (2,)
    conn.close()


def test_prune_annotation_keeps_a_resource(tmp_path, conf):
    write(conf, "members.yaml", LIST.replace("metadata: {name: members}",
                                             "metadata:\n  name: members\n  annotations: {listkeeper/prune: disabled}"))
    run(tmp_path, "reconcile", "conf")
    (conf / "members.yaml").unlink()
    result = run(tmp_path, "reconcile", "conf", "--prune")
    assert "kept (annotation listkeeper/prune: disabled)" in result.stdout
    assert db(tmp_path).execute("select deleted_at from resources where name='members'").fetchone() == (None,)


def test_deleting_a_referenced_relay_is_refused_and_nothing_applied(tmp_path, conf):
    write(conf, "routes.yaml", ROUTES.replace("metadata: {name: default}",
                                              "metadata:\n  name: default\n  annotations: {listkeeper/prune: disabled}"))
    run(tmp_path, "reconcile", "conf")
    (conf / "routes.yaml").unlink()
    write(conf, "members.yaml", LIST.replace('"[m]"', '"[changed]"'))
    result = run(tmp_path, "reconcile", "conf", "--prune")
    assert result.returncode == 1
    assert ("cannot delete Relay/smarthost: RoutingTable/default (spec.routes[1]) still references it"
            in result.stderr)
    conn = db(tmp_path)
    assert conn.execute("select count(*) from resources where kind='Relay'").fetchone() == (1,)
    assert '"[m]"' in conn.execute("select spec from resources where name='members'").fetchone()[0]
    conn.close()


def test_drift_is_shown_and_restored(tmp_path, conf):
    run(tmp_path, "reconcile", "conf")
    store = Store.open(url(tmp_path))
    with store.engine.begin() as conn:  # an admin change outside git
        live = dict(applied_config.applied_resources(conn)[("MailingList", "members")].spec)
        live["subject_prefix"] = "[admin]"
        applied_config.set_live_spec(conn, "MailingList", "members", live, spec_hash(live))
    store.close()
    dry = run(tmp_path, "reconcile", "conf", "--dry-run", "--detailed-exitcode")
    assert dry.returncode == 2
    assert "Drift: changed outside git" in dry.stdout
    assert '~ spec.subject_prefix: "[m]" → "[admin]"' in dry.stdout.split("Drift:")[1]
    doc = json.loads(run(tmp_path, "reconcile", "conf", "--dry-run", "--output", "json").stdout)
    assert doc["drift"] == [{"kind": "MailingList", "name": "members", "fields": [
        {"path": "spec.subject_prefix", "before": "[m]", "after": "[admin]"}]}]
    run(tmp_path, "reconcile", "conf")
    assert run(tmp_path, "reconcile", "conf", "--dry-run", "--detailed-exitcode").returncode == 0


def test_saved_plan_applies_exactly_and_refuses_when_stale(tmp_path, conf):
    run(tmp_path, "reconcile", "conf")
    write(conf, "members.yaml", LIST.replace('"[m]"', '"[saved]"'))
    assert run(tmp_path, "reconcile", "conf", "--dry-run", "--out", "plan.json").returncode == 0
    write(conf, "members.yaml", LIST.replace('"[m]"', '"[not-this]"'))  # the files move on; the plan does not
    applied = run(tmp_path, "reconcile", "--plan", "plan.json")
    assert applied.returncode == 0 and "Applied plan.json: configuration generation 2." in applied.stdout
    assert '"[saved]"' in db(tmp_path).execute("select spec from resources where name='members'").fetchone()[0]
    stale = run(tmp_path, "reconcile", "--plan", "plan.json")
    assert stale.returncode == 1
    assert "the store changed since this plan was made (plan: generation 1, store: generation 2)" in stale.stderr


def test_a_second_reconcile_waits_for_the_lock_then_fails_cleanly(tmp_path, conf):
    run(tmp_path, "reconcile", "conf")
    holder = db(tmp_path)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the store
    try:
        result = run(tmp_path, "reconcile", "conf", "--lock-timeout", "1")
    finally:
        holder.rollback()
        holder.close()
    assert result.returncode == 1
    assert "another reconcile holds the configuration lock (waited 1s)" in result.stderr
    assert "Traceback" not in result.stderr


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A config repository: main holds the base manifests; the working tree holds a change."""
    root = tmp_path / "config"
    write(root / "lists.d", "domain.yaml", DOMAIN)
    write(root / "lists.d", "members.yaml", LIST)
    write(root / "routes.d", "routes.yaml", ROUTES)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-qm", "base")
    write(root / "lists.d", "members.yaml", LIST.replace("    - address: bob@example.net\n",
                                                         "    - address: carol@example.com\n"))
    return root


def test_against_a_revision_needs_no_store(repo):
    result = run(repo, "reconcile", "--dry-run", "--against", "main", "--detailed-exitcode", store=False)
    assert result.returncode == 2, result.stderr
    assert "~ MailingList/members will be updated in place" in result.stdout
    assert "MailingList/members: receiving members 2 → 2 (+1 join, -1 leave); joins: carol@example.com; " \
           "leaves: bob@example.net" in result.stdout
    assert "(runtime impact (queued deliveries, held posts) omitted: no --store given)" in result.stdout
    assert "  Domain/example-org (unchanged)" in result.stdout
    assert not (repo / "var").exists()
    clean = run(repo, "reconcile", "--dry-run", "--against", "HEAD", "--detailed-exitcode", "lists.d",
                store=False)
    assert clean.returncode == 2  # lists.d alone: the routes exist only at HEAD
    bad = run(repo, "reconcile", "--dry-run", "--against", "no-such-branch", store=False)
    assert bad.returncode == 1 and "--against no-such-branch" in bad.stderr


def test_ci_kit_commands_run_on_a_config_repository(repo):
    """The commands of examples/ci/, run as the workflow and the hook would run them."""
    workflow = YAML(typ="safe").load((REPO / "examples/ci/github-actions.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["plan"]["steps"]}
    env = {**os.environ, "BASE_REF": "main"}
    env.pop("LISTKEEPER_STORE", None)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env["PATH"]
    for name in ("Validate", "Plan against the base branch"):
        done = subprocess.run(["bash", "-e", "-c", steps[name]["run"]], cwd=repo, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, (name, done.stderr)
    plan = (repo / "plan.txt").read_text()
    assert "joins: carol@example.com" in plan and plan.rstrip().endswith("Plan: 0 to create, 1 to update, 0 to delete.")
    hooks = YAML(typ="safe").load((REPO / "examples/ci/pre-commit-config.yaml").read_text())
    (hook,) = hooks["repos"][0]["hooks"]
    ok = subprocess.run(hook["entry"].split(), cwd=repo, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    write(repo / "lists.d", "members.yaml", LIST + "  colour: blue\n")
    bad = subprocess.run(hook["entry"].split(), cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "lists.d/members.yaml:11:3: spec.colour: unknown field" in bad.stderr


def test_a_failing_write_applies_nothing_and_names_the_resource(tmp_path, conf):
    write(conf, "second.yaml", LIST.replace("members", "second"))
    run(tmp_path, "reconcile", "conf")
    write(conf, "members.yaml", LIST.replace('"[m]"', '"[new]"'))
    run(tmp_path, "reconcile", "conf", "--dry-run", "--out", "plan.json")
    doc = json.loads((tmp_path / "plan.json").read_text())
    change = next(c for c in doc["resource_changes"] if c["name"] == "members")
    change["name"], change["previous_name"] = "second", "members"  # an edited plan: rename onto a live list
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    result = run(tmp_path, "reconcile", "--plan", "plan.json")
    assert result.returncode == 1
    assert "applying failed at MailingList/second: IntegrityError" in result.stderr
    assert "nothing was changed" in result.stderr
    conn = db(tmp_path)
    assert sorted(conn.execute("select name from resources where kind='MailingList'").fetchall()) == [
        ("members",), ("second",)]
    assert '"[m]"' in conn.execute("select spec from resources where name='members'").fetchone()[0]
    conn.close()


def test_rename_onto_a_deleted_lists_name_is_refused(tmp_path, conf):
    write(conf, "second.yaml", LIST.replace("members", "second"))
    run(tmp_path, "reconcile", "conf")
    spool_runtime_data(tmp_path, "second")
    (conf / "second.yaml").unlink()
    run(tmp_path, "reconcile", "conf", "--prune")  # second is soft-deleted, its posts kept
    write(conf, "members.yaml", LIST.replace("metadata: {name: members}",
                                             "metadata: {name: second, renamedFrom: members}"))
    result = run(tmp_path, "reconcile", "conf", "--prune")
    assert result.returncode == 1
    assert "a deleted MailingList named 'second' still holds runtime data" in result.stderr
    conn = db(tmp_path)
    assert conn.execute("select name, deleted_at is null from resources where kind='MailingList' order by name"
                        ).fetchall() == [("members", 1), ("second", 0)]
    conn.close()
