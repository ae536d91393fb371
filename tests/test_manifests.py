"""validate: the repo's manifests pass; each kind of bad input gives path:line:column: field: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from listkeeper.manifests import ManifestErrors, load_manifests

from .conftest import DOMAIN, REPO, write

CLI = [sys.executable, "-m", "listkeeper"]


def errors_for(tmp_path: Path, text: str, extra: str = DOMAIN) -> list[str]:
    write(tmp_path / "conf", "domain.yaml", extra)
    write(tmp_path / "conf", "bad.yaml", text)
    with pytest.raises(ManifestErrors) as info:
        load_manifests([tmp_path / "conf"])
    return [str(e).replace(str(tmp_path / "conf") + "/", "") for e in info.value.errors]


def test_repo_manifests_are_valid():
    result = subprocess.run(CLI + ["validate"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: ")


# each file of examples/ stands alone; examples/production/ is one configuration, validated whole (with the DKIM
# keys it names) in test_examples.py
STANDALONE = sorted(str(p.relative_to(REPO)) for p in (REPO / "examples").rglob("*.y*ml")
                    if "production" not in p.relative_to(REPO).parts)


@pytest.mark.parametrize("example", STANDALONE)
def test_every_example_is_valid(example):
    result = subprocess.run(CLI + ["validate", example], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_file_without_manifests_is_skipped_and_said_so():
    result = subprocess.run(CLI + ["validate", *STANDALONE], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "examples/ci/github-actions.yml: skipped: no document has apiVersion or kind" in result.stderr


LIST = """
apiVersion: listkeeper/v1
kind: MailingList
metadata:
  name: members
spec:
  address: members@example.org
  type: discussion
"""

CASES = {
    "broken yaml": ("kind: [MailingList\nspec: x\n", "bad.yaml:2:5: (document): YAML syntax error"),
    "duplicate key": ("apiVersion: listkeeper/v1\nkind: Domain\nkind: Domain\n",
                      "bad.yaml:3:1: kind: duplicate key (first at line 2)"),
    "unknown kind": ("apiVersion: listkeeper/v1\nkind: Mailbox\nmetadata: {name: x}\n",
                     "bad.yaml:2:1: kind: unknown kind 'Mailbox'"),
    "unknown apiVersion": ("apiVersion: listkeeper/v9\nkind: Domain\n",
                           "bad.yaml:1:1: apiVersion: unknown apiVersion 'listkeeper/v9'"),
    "unknown field": (LIST + "  colour: blue\n", "bad.yaml:8:3: spec.colour: unknown field"),
    "missing field": (LIST.replace("  type: discussion\n", ""), "bad.yaml:5:1: spec.type: required field is missing"),
    "wrong type": (LIST + "  max_message_size: lots\n",
                   "bad.yaml:8:3: spec.max_message_size: Input should be a valid integer"),
    "out of range": (LIST + "  max_message_size: 10\n",
                     "bad.yaml:8:3: spec.max_message_size: Input should be greater than or equal to 1024"),
    "bad enum in list": (LIST + "  subscribers:\n    - address: a@example.org\n      roles: [regular, boss]\n",
                         "bad.yaml:10:24: spec.subscribers[0].roles[1]: Input should be 'regular'"),
    "announce without moderator": (LIST.replace("discussion", "announce"),
                                   "bad.yaml:7:3: spec.type: an announce list needs at least one subscriber with role moderator"),
    "unserved domain": (LIST.replace("example.org", "elsewhere.net"),
                        "bad.yaml:6:3: spec.address: domain elsewhere.net is not served by any Domain resource"),
    "unknown transport": ("apiVersion: listkeeper/v1\nkind: RoutingTable\nmetadata: {name: r}\nspec:\n"
                          "  routes:\n    - match: '*'\n      transport: teleport\n",
                          "bad.yaml:7:7: spec.routes[0].transport: expected one of 'pickup', 'relay', 'mx', 'discard'"),
    "undefined relay": ("apiVersion: listkeeper/v1\nkind: RoutingTable\nmetadata: {name: r}\nspec:\n"
                        "  routes:\n    - match: '*'\n      transport: relay\n      relay: smarthost\n",
                        "bad.yaml:8:7: spec.routes[0].relay: no Relay named 'smarthost'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_names_file_line_column(tmp_path, name):
    text, expected = CASES[name]
    errors = errors_for(tmp_path, text)
    assert any(e.startswith(expected) for e in errors), errors


def test_duplicate_names_both_locations(tmp_path):
    errors = errors_for(tmp_path, LIST + "---\n" + LIST)
    assert errors == [
        "bad.yaml:4:3: metadata.name: duplicate MailingList 'members'; defined again at bad.yaml:13:3",
        "bad.yaml:13:3: metadata.name: duplicate MailingList 'members'; first defined at bad.yaml:4:3",
    ]


def test_inline_secret_is_refused_and_never_printed(tmp_path):
    relay = ("apiVersion: listkeeper/v1\nkind: Relay\nmetadata: {name: smarthost}\nspec:\n"
             "  host: smtp.example.net\n  auth: {username: u, password: hunter2-very-secret}\n")
    write(tmp_path / "conf", "relay.yaml", relay)
    result = subprocess.run(CLI + ["validate", str(tmp_path / "conf")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "relay.yaml:6:23: spec.auth.password: inline secrets are not allowed" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_cli_prints_one_line_per_error_and_exits_1(tmp_path):
    write(tmp_path / "conf", "bad.yaml", LIST + "  colour: blue\n  max_message_size: 10\n")
    result = subprocess.run(CLI + ["validate", str(tmp_path / "conf")], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith("bad.yaml:8:3: spec.colour: unknown field")
    assert "bad.yaml:9:3: spec.max_message_size:" in lines[1]
    assert lines[-1] == "2 error(s); nothing was changed."


def test_missing_path_is_an_error(tmp_path):
    result = subprocess.run(CLI + ["validate", str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "no such file or directory" in result.stderr
