"""schemas/ is generated from the models, kept fresh, and describes the repo's own manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from ruamel.yaml import YAML

from listkeeper.manifests.schema import ALL, schemas

from .conftest import REPO

MANIFESTS = sorted(
    p for folder in ("lists.d", "routes.d", "examples") for p in (REPO / folder).rglob("*.y*ml")
    if "ci" not in p.relative_to(REPO).parts  # the CI kit: a workflow and a pre-commit config
)


def test_committed_schemas_are_fresh(tmp_path):
    subprocess.run([sys.executable, "-m", "listkeeper", "schema", "--out", str(tmp_path / "schemas"),
                    "--reference", str(tmp_path / "reference.md")], check=True, capture_output=True)
    generated = {p.name: p.read_text() for p in (tmp_path / "schemas").iterdir()}
    committed = {p.name: p.read_text() for p in (REPO / "schemas").iterdir()}
    assert committed == generated, "schemas/ is stale: run `listkeeper schema` and commit"
    assert (REPO / "docs" / "reference.md").read_text() == (tmp_path / "reference.md").read_text(), \
        "docs/reference.md is stale: run `listkeeper schema` and commit"


@pytest.mark.parametrize("name", sorted(schemas()))
def test_schemas_are_draft_2020_12(name):
    Draft202012Validator.check_schema(schemas()[name])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_manifest_has_a_modeline_and_matches_its_schema(path: Path):
    first = path.read_text().splitlines()[0]
    schemas_folder = os.path.relpath(REPO / "schemas", path.parent)  # ../schemas, or deeper for examples/production
    assert first.startswith(f"# yaml-language-server: $schema={schemas_folder}/"), first
    schema_name = first.rsplit("/", 1)[1]
    registry = Registry().with_resources((n, Resource.from_contents(s)) for n, s in schemas().items())
    validator = Draft202012Validator(schemas()[schema_name], registry=registry)
    for doc in YAML(typ="safe").load_all(path.read_text()):
        errors = [e.message for e in validator.iter_errors(json.loads(json.dumps(doc)))]
        assert not errors, errors


def test_combined_schema_names_every_kind():
    assert len(schemas()[ALL]["anyOf"]) == len(schemas()) - 1
