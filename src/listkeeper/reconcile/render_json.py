"""Plan -> JSON for machines. FORMAT_VERSION 1.x: keys may be added, never removed or changed.

{
  "format_version": "1.0",
  "base_generation": 4 | null,          # the store generation planned against (null: no store)
  "against": "origin/main" | null,      # planned against manifests at a git revision
  "prune": false,
  "resource_changes": [{"kind", "name", "actions": ["create"|"update"|"delete"|"no-op"],
                        "previous_name", "held_back", "restores", "source", "annotations",
                        "before", "after", "fields": [{"path", "before", "after"}]}],
  "drift": [{"kind", "name", "fields": [...]}],
  "impact": [{"kind", "name", "summary", "counts", "examples"}],
  "impact_note": str | null,
  "summary": {"create", "update", "delete", "held_back", "drift", "changes": bool}
}
Absent values in "fields" are null plus "before_absent"/"after_absent": true.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .impact import Impact
from .plan import MISSING, Action, FieldChange, Plan

FORMAT_VERSION = "1.0"


def _field(change: FieldChange) -> dict:
    out = {"path": change.path,
           "before": None if change.old is MISSING else change.old,
           "after": None if change.new is MISSING else change.new}
    if change.old is MISSING:
        out["before_absent"] = True
    if change.new is MISSING:
        out["after_absent"] = True
    return out


def plan_document(plan: Plan, impacts: Sequence[Impact] = (), note: str | None = None,
                  against: str | None = None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "base_generation": plan.base_generation,
        "against": against,
        "prune": plan.prune,
        "resource_changes": [
            {"kind": c.kind, "name": c.name, "actions": [c.action.value], "previous_name": c.previous_name,
             "held_back": c.held_back or None, "restores": c.restores, "source": c.source,
             "annotations": dict(c.annotations), "before": c.before, "after": c.after,
             "fields": [_field(f) for f in c.fields]}
            for c in plan.changes
        ],
        "drift": [{"kind": d.kind, "name": d.name, "fields": [_field(f) for f in d.fields]} for d in plan.drift],
        "impact": [{"kind": i.kind, "name": i.name, "summary": i.summary, "counts": dict(i.counts),
                    "examples": {k: list(v) for k, v in i.examples.items()}} for i in impacts],
        "impact_note": note,
        "summary": {"create": plan.count(Action.create), "update": plan.count(Action.update),
                    "delete": plan.count(Action.delete), "held_back": plan.held_back,
                    "drift": len(plan.drift), "changes": plan.has_changes},
    }


def render_json(plan: Plan, impacts: Sequence[Impact] = (), note: str | None = None,
                against: str | None = None) -> str:
    return json.dumps(plan_document(plan, impacts, note, against), indent=2, ensure_ascii=False)
