"""Saved plans: `--dry-run --out plan.json`, then `--plan plan.json` applies exactly that plan."""

from __future__ import annotations

import json
from pathlib import Path

from .plan import Action, Plan, ResourceChange
from .render_json import FORMAT_VERSION


class SavedPlanError(Exception):
    pass


def load_saved_plan(path: Path) -> Plan:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SavedPlanError(f"cannot read plan {path}: {exc}") from None
    if str(doc.get("format_version", "")).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise SavedPlanError(f"{path}: unsupported plan format {doc.get('format_version')!r}")
    if doc.get("base_generation") is None:
        raise SavedPlanError(f"{path} was made without a store (e.g. with --against); it cannot be applied")
    changes = tuple(
        ResourceChange(c["kind"], c["name"], Action(c["actions"][0]), (), c.get("before"), c.get("after"),
                       c.get("source", path.name), c.get("held_back") or "", c.get("previous_name"),
                       bool(c.get("restores")), c.get("annotations") or {})
        for c in doc["resource_changes"]
    )
    return Plan(changes, (), bool(doc.get("prune")), int(doc["base_generation"]))
