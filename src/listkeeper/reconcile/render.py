"""Plan -> text. Computing the plan knows nothing of how it is shown; colour only on a terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from .impact import Impact
from .plan import MISSING, Action, Drift, FieldChange, Plan, ResourceChange, is_secret

MARKERS = {Action.create: ("+", "green"), Action.update: ("~", "yellow"),
           Action.delete: ("-", "red"), Action.noop: (" ", None)}


def show_value(value: Any) -> str:
    if is_secret(value):  # a reference is shown; its value is never resolved at plan time
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "} (sensitive)"
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
    if change.action is Action.noop:
        return [f"  {change.kind}/{change.name} (unchanged)"]
    note = {Action.create: "will be created", Action.update: "will be updated in place",
            Action.delete: "will be deleted"}[change.action]
    if change.previous_name:
        note = f"will be renamed from {change.previous_name}" + (" and updated" if change.fields else "")
    if change.restores:
        note += ", restoring its runtime data"
    if change.held_back:
        note = f"is not in the manifests; kept ({change.held_back})"
    lines = [click.style(f"{marker} {change.kind}/{change.name} {note}", fg=colour, bold=True)
             + f"  [{change.source}]"]
    lines.extend(render_field(f) for f in change.fields)
    return lines


def render_drift(drift: Sequence[Drift]) -> list[str]:
    if not drift:
        return []
    lines = ["", click.style("Drift: changed outside git since the last reconcile; "
                             "applying restores the files' version:", fg="magenta", bold=True)]
    for item in drift:
        lines.append(f"  ~ {item.kind}/{item.name}")
        lines.extend(render_field(f) for f in item.fields)
    return lines


def render_impact(impacts: Sequence[Impact], note: str | None) -> list[str]:
    if not impacts and not note:
        return []
    lines = ["", click.style("Impact on runtime data:", bold=True)]
    for item in impacts:
        line = f"  {item.kind}/{item.name}: {item.summary}"
        for label, examples in item.examples.items():
            if examples:
                line += f"; {label}: {', '.join(examples)}"
        lines.append(line)
    if note:
        lines.append(f"  ({note})")
    return lines


def render_text(plan: Plan, impacts: Sequence[Impact] = (), note: str | None = None) -> str:
    lines: list[str] = []
    for change in plan.changes:
        lines.extend(render_resource(change))
    lines.extend(render_drift(plan.drift))
    lines.extend(render_impact(impacts, note))
    lines.append("")
    if not plan.has_changes:
        lines.append("No changes. The store matches the manifests.")
    else:
        summary = (f"Plan: {plan.count(Action.create)} to create, {plan.count(Action.update)} to update, "
                   f"{plan.count(Action.delete)} to delete.")
        if plan.held_back:
            summary += f" {plan.held_back} deletion(s) held back."
        lines.append(summary)
    return "\n".join(lines)
