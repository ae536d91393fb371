"""examples/ is part of the product: the production configuration validates, plans and runs its drip
sequence against a real SQLite store; the CI workflow's own steps run on a configuration repository made
from it; the systemd unit is one systemd accepts and starts `listkeeper serve` with options it has."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from .conftest import REPO

PRODUCTION = REPO / "examples" / "production"
WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
UNIT = REPO / "examples" / "systemd" / "listkeeper.service"
PASSWORD = "correct-horse-battery-staple"  # the relay password in the environment: never printed


def steps() -> dict[str, dict]:
    workflow = YAML(typ="safe").load(WORKFLOW.read_text())
    return {step.get("name"): step for step in workflow["jobs"]["plan"]["steps"]}


def environment(**more: str) -> dict[str, str]:
    env = {**os.environ, "CORP_RELAY_PASSWORD": PASSWORD, **more}
    env.pop("LISTKEEPER_STORE", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # `listkeeper` and `python`
    return env


def run_step(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-e", "-c", steps()[name]["run"]], cwd=cwd, env=environment(**env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (name, done.stdout, done.stderr)
    return done


@pytest.fixture
def config_repo(tmp_path: Path) -> Path:
    """A configuration repository as an operator would start it from examples/production: its files,
    DKIM keys made by the workflow's own step, and the example member database in var/."""
    repo = tmp_path / "config"
    shutil.copytree(PRODUCTION, repo)
    run_step("Throwaway DKIM keys", repo)
    (repo / "var").mkdir()
    db = sqlite3.connect(repo / "var" / "crm.db")
    db.executescript((PRODUCTION / "directory.sql").read_text())
    db.close()
    return repo


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listkeeper", *args, "--store", f"sqlite:///{repo}/var/lk.db"],
                          cwd=repo, env=environment(), capture_output=True, text=True, timeout=120)


def test_production_configuration_validates(config_repo):
    assert sorted(p.name for p in (config_repo / "secrets" / "dkim").iterdir()) == [
        "example.org.pem", "news.example.org.pem"]
    done = subprocess.run([sys.executable, "-m", "listkeeper", "validate"], cwd=config_repo, env=environment(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("valid: 2 Domain, 2 MailingList, 1 MemberDirectory, 4 Notification, 1 Relay, "
                                   "3 Report, 1 RoutingTable")
    assert done.stderr == ""


def test_production_configuration_without_its_keys_says_which_file_is_missing(tmp_path):
    shutil.copytree(PRODUCTION, tmp_path / "config")
    done = subprocess.run([sys.executable, "-m", "listkeeper", "validate"], cwd=tmp_path / "config",
                          env=environment(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "lists.d/domains.yaml:17:5: spec.dkim.key: cannot read the DKIM key from file " \
           "secrets/dkim/example.org.pem: No such file or directory" in done.stderr


def test_production_plan_against_an_empty_store(config_repo):
    dry = cli(config_repo, "reconcile", "--dry-run", "--detailed-exitcode")
    assert dry.returncode == 2, dry.stderr  # changes
    out = dry.stdout
    for resource in ("Domain/example-org", "Domain/news-example-org", "Relay/corp-relay", "RoutingTable/outbound",
                     "MemberDirectory/crm", "MailingList/news", "MailingList/newcomers", "Notification/relay-down",
                     "Report/weekly-drip"):
        assert f"+ {resource} will be created" in out
    assert "+ spec.auth.password = {env: CORP_RELAY_PASSWORD}" in out and PASSWORD not in out
    assert "+ spec.dkim.key = {file: secrets/dkim/example.org.pem}" in out and "PRIVATE KEY" not in out
    # the dynamic list's query runs over the member database: full or honorary, dues paid, not opted out
    assert ("MailingList/news: selected members 0 → 2 (+2 join, -0 leave); joins: ann@example.net, "
            "di@example.net") in out
    assert out.rstrip().endswith("Plan: 14 to create, 0 to update, 0 to delete.")
    doc = json.loads(cli(config_repo, "reconcile", "--dry-run", "--output", "json").stdout)
    assert (doc["summary"]["create"], doc["summary"]["update"], doc["summary"]["delete"]) == (14, 0, 0)
    assert {"kind": "MailingList", "name": "news", "summary": "selected members 0 → 2 (+2 join, -0 leave)",
            "counts": {"selected_before": 0, "selected_after": 2},
            "examples": {"joins": ["ann@example.net", "di@example.net"], "leaves": []}} in doc["impact"]
    status = json.loads(cli(config_repo, "status", "--output", "json").stdout)
    assert status["generation"] == 0  # a dry run applies nothing


def test_production_plan_without_the_member_database_says_so_in_one_line(config_repo):
    """CI has no member database: the plan still comes out, and names the directory it could not read."""
    (config_repo / "var" / "crm.db").unlink()
    dry = cli(config_repo, "reconcile", "--dry-run", "--detailed-exitcode")
    assert dry.returncode == 2, dry.stderr
    line = next(line for line in dry.stdout.splitlines() if "MailingList/news:" in line)
    assert line.strip() == ("MailingList/news: selected members unknown: cannot read the member directory "
                            "(sqlite:///var/crm.db): unable to open database file")
    assert "Background on this error" not in dry.stdout and "Traceback" not in dry.stderr
    assert not (config_repo / "var" / "crm.db").exists()  # a dry run writes nothing, not even an empty file


def test_production_drip_sequence_runs(config_repo):
    assert cli(config_repo, "reconcile").returncode == 0
    days = [cli(config_repo, "tick", "--at", f"2030-01-{d:02d}T09:00").stdout.splitlines() for d in range(1, 4)]
    assert days[0] == ["newcomers/welcome: fired for 1", "newcomers/day: fired for 1"]
    # from the second day on, the daily subscriptions report goes out with the tick as well
    assert days[1] == ["newcomers/day: fired for 1", "reports.send: queued 1 message(s)"]
    assert days[2] == ["newcomers/day: fired for 1", "newcomers/tips: fired for 1", "reports.send: queued 1 message(s)"]
    shown = cli(config_repo, "events", "show", "newcomers").stdout.splitlines()
    assert [line.split() for line in shown] == [["subscriber", "day", "join", "tips", "welcome"],
                                                ["community@example.org", "3", "1", "1", "1"]]
    queued = cli(config_repo, "queue").stdout.splitlines()
    assert queued[0].split() == ["state", "destination", "deliveries"]
    assert [line.split() for line in queued[1:]] == [["queued", "-", "4"]]  # welcome, tips, two reports


def test_workflow_runs_validate_and_a_detailed_dry_run_on_pull_requests():
    workflow = YAML(typ="safe").load(WORKFLOW.read_text())
    assert "pull_request" in workflow["on"]
    commands = " ".join(step.get("run", "") for step in workflow["jobs"]["plan"]["steps"])
    assert "listkeeper validate" in commands
    assert re.search(r"listkeeper reconcile --dry-run .*--detailed-exitcode", commands)


def test_workflow_steps_plan_a_change_to_the_production_configuration(config_repo):
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.org"]
    for args in (["init", "-q", "-b", "main"], ["add", "lists.d", "routes.d"], ["commit", "-q", "-m", "base"]):
        subprocess.run(git + args, cwd=config_repo, check=True, capture_output=True)
    news = config_repo / "lists.d" / "news.yaml"
    news.write_text(news.read_text().replace("is: [full, honorary]", "is: [full, associate, honorary]"))
    run_step("Validate", config_repo)
    run_step("Plan against the base branch", config_repo, BASE_REF="main")
    plan = (config_repo / "plan.txt").read_text()
    assert "~ MailingList/news will be updated in place" in plan
    assert plan.rstrip().endswith("Plan: 0 to create, 1 to update, 0 to delete.")
    assert PASSWORD not in plan


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_starts_serve_with_options_it_has():
    service = unit()["Service"]
    command = " ".join(service["ExecStart"].replace("\\\n", " ").split())
    assert re.match(r"^/\S+/listkeeper serve ", command), command
    assert (service["KillSignal"], service["Restart"]) == ("SIGTERM", "on-failure")
    assert int(service["TimeoutStopSec"]) > 0 and service["Type"] == "simple"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
    help_text = subprocess.run([sys.executable, "-m", "listkeeper", "serve", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    for option in re.findall(r"(--[a-z-]+)", command):
        assert option in help_text, option


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    # verify insists that ExecStart's program exists: point it at this environment's listkeeper
    program = shutil.which("listkeeper", path=str(Path(sys.executable).parent)) or shutil.which("true")
    text = UNIT.read_text().replace("/srv/listkeeper/.venv/bin/listkeeper", program)
    assert text != UNIT.read_text()
    (tmp_path / "listkeeper.service").write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "listkeeper.service")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr  # warnings count too
