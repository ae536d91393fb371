"""listkeeper reconcile against a real SQLite file: dry-run, apply, idempotence, prune, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import DOMAIN, pickup_routes, write

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
"""


def run(tmp_path, *args):
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/var/lk.db"}
    return subprocess.run(CLI + list(args), cwd=tmp_path, capture_output=True, text=True, env=env)


def setup_conf(tmp_path):
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "members.yaml", LIST)
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return conf


def test_dry_run_apply_then_nothing_left(tmp_path):
    setup_conf(tmp_path)
    dry = run(tmp_path, "reconcile", "conf", "--dry-run", "--detailed-exitcode")
    assert dry.returncode == 2, dry.stderr
    assert "+ MailingList/members will be created" in dry.stdout
    assert dry.stdout.rstrip().endswith("Plan: 3 to create, 0 to update, 0 to delete.")
    again = run(tmp_path, "reconcile", "conf", "--dry-run", "--detailed-exitcode")
    assert again.returncode == 2, "a dry run must not change the store"

    applied = run(tmp_path, "reconcile", "conf", "--detailed-exitcode")
    assert applied.returncode == 2 and "Applied: configuration generation 1." in applied.stdout
    second = run(tmp_path, "reconcile", "conf", "--detailed-exitcode")
    assert second.returncode == 0, second.stdout
    assert "No changes." in second.stdout


def test_update_shows_old_and_new(tmp_path):
    conf = setup_conf(tmp_path)
    run(tmp_path, "reconcile", "conf")
    write(conf, "members.yaml", LIST.replace('"[m]"', '"[members]"'))
    dry = run(tmp_path, "reconcile", "conf", "--dry-run")
    assert '~ spec.subject_prefix: "[m]" → "[members]"' in dry.stdout
    assert "Plan: 0 to create, 1 to update, 0 to delete." in dry.stdout


def test_deletion_needs_prune(tmp_path):
    conf = setup_conf(tmp_path)
    run(tmp_path, "reconcile", "conf")
    (conf / "members.yaml").unlink()
    kept = run(tmp_path, "reconcile", "conf", "--detailed-exitcode")
    assert kept.returncode == 2
    assert "kept (run with --prune to delete)" in kept.stdout
    assert "Applied" not in kept.stdout
    pruned = run(tmp_path, "reconcile", "conf", "--prune")
    assert "- MailingList/members will be deleted" in pruned.stdout
    assert "Applied: configuration generation 2." in pruned.stdout
    assert run(tmp_path, "reconcile", "conf", "--detailed-exitcode").returncode == 0


def test_invalid_manifests_change_nothing(tmp_path):
    conf = setup_conf(tmp_path)
    write(conf, "broken.yaml", "kind: [\n")
    result = run(tmp_path, "reconcile", "conf", "--detailed-exitcode")
    assert result.returncode == 1
    assert "broken.yaml:2:1: (document): YAML syntax error" in result.stderr
    assert not (tmp_path / "var" / "lk.db").exists()


def test_bad_store_url_is_a_clear_error(tmp_path):
    setup_conf(tmp_path)
    env = {**os.environ, "LISTKEEPER_STORE": "nosuchdb://x"}
    result = subprocess.run(CLI + ["reconcile", "conf"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "bad store URL" in result.stderr and "Traceback" not in result.stderr
