"""Plan -> text. Computing the plan knows nothing of how it is shown."""

from __future__ import annotations

import json
from typing import Any

import click

from .plan import MISSING, Action, FieldChange, Plan, ResourceChange, is_secret

MARKERS = {Action.create: ("+", "green"), Action.update: ("~", "yellow"),
           Action.delete: ("-", "red"), Action.noop: (" ", None)}


def show_value(value: Any) -> str:
    if is_secret(value):
        return "(sensitive)"
    return json.dumps(value, ensure_ascii=False)


def render_field(change: FieldChange) -> str:
    if change.old is MISSING:
        return click.style(f"      + {change.path} = {show_value(change.new)}", fg="green")
    if change.new is MISSING:
        return click.style(f"      - {change.path} = {show_value(change.old)}", fg="red")
    return click.style(f"      ~ {change.path}: {show_value(change.old)} → {show_value(change.new)}",
                       fg="yellow")


def render_resource(change: ResourceChange) -> list[str]:
    marker, colour = MARKERS[change.action]
    title = f"{marker} {change.kind}/{change.name}"
    if change.action is Action.noop:
        return [f"  {change.kind}/{change.name} (unchanged)"]
    note = {Action.create: "will be created", Action.update: "will be updated in place",
            Action.delete: "will be deleted"}[change.action]
    if change.held_back:
        note = "is not in the manifests; kept (run with --prune to delete)"
    lines = [click.style(f"{title} {note}", fg=colour, bold=True) + f"  [{change.source}]"]
    lines.extend(render_field(f) for f in change.fields)
    return lines


def render_text(plan: Plan) -> str:
    lines: list[str] = []
    for change in plan.changes:
        lines.extend(render_resource(change))
    lines.append("")
    if not plan.has_changes:
        lines.append("No changes. The store matches the manifests.")
    else:
        summary = (f"Plan: {plan.count(Action.create)} to create, {plan.count(Action.update)} to update, "
                   f"{plan.count(Action.delete)} to delete.")
        if plan.held_back:
            summary += f" {plan.held_back} deletion(s) held back: use --prune."
        lines.append(summary)
    return "\n".join(lines)
