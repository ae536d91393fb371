"""What a plan does to runtime data: subscribers, queued deliveries, held posts. Pure, given the facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from listkeeper.manifests.routes import RoutingTableSpec, describe, route_for

from .plan import Action, Plan, ResourceChange

EXAMPLES = 5
RECEIVING = {"regular", "digest"}


@dataclass(frozen=True)
class RuntimeFacts:
    """Counted from the store before planning."""

    pending_by_list: Mapping[str, int] = field(default_factory=dict)
    held_by_list: Mapping[str, int] = field(default_factory=dict)
    pending_domains: Mapping[str, int] = field(default_factory=dict)
    counters_by_event: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Impact:
    kind: str
    name: str
    summary: str
    counts: Mapping[str, int] = field(default_factory=dict)
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


NO_STORE_NOTE = "runtime impact (queued deliveries, held posts) omitted: no --store given"


def _members(spec: Mapping[str, Any] | None) -> list[str]:
    if not spec:
        return []
    return [s["address"] for s in spec.get("subscribers", []) if RECEIVING & set(s.get("roles", []))]


def _routes(spec: Mapping[str, Any] | None):
    return RoutingTableSpec.model_validate(spec).routes if spec else []


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _deliveries(n: int) -> str:
    return _plural(n, "queued delivery", "queued deliveries")


def impacts(plan: Plan, facts: RuntimeFacts | None, routes_after: Mapping[str, Any] | None = None,
            selections: Mapping[str, Any] | None = None) -> tuple[Impact, ...]:
    """`selections`: list name -> SelectionChange of a dynamic list whose query or directory changes."""
    out: list[Impact] = []
    for change in plan.changes:
        if change.kind == "MailingList" and selections and change.name in selections:
            out.append(_selection_impact(change, selections[change.name]))
        if change.action is Action.noop and not change.held_back:
            continue
        if change.kind == "MailingList":
            out.extend(_list_impact(change, facts))
        elif change.kind == "RoutingTable" and facts is not None:
            out.extend(_routing_impact(change, facts))
        elif change.kind == "Relay" and facts is not None and change.action is not Action.create:
            out.extend(_relay_impact(change, facts, routes_after))
    return tuple(out)


def _list_impact(change: ResourceChange, facts: RuntimeFacts | None) -> list[Impact]:
    name = change.previous_name or change.name
    if change.action is Action.delete:
        subscribers = len((change.before or {}).get("subscribers", []))
        counts = {"subscribers": subscribers}
        parts = [_plural(subscribers, "subscriber")]
        if facts is not None:
            counts |= {"queued_deliveries": facts.pending_by_list.get(name, 0),
                       "held_posts": facts.held_by_list.get(name, 0)}
            parts += [_deliveries(counts["queued_deliveries"]),
                      _plural(counts["held_posts"], "held post")]
        verb = "would delete (kept: " + change.held_back + ")" if change.held_back else \
            "deletes (restorable: soft delete for the retention period)"
        return [Impact(change.kind, change.name, f"{verb}: {', '.join(parts)}", counts)]
    if (change.after or change.before or {}).get("members"):
        before, after = [], []  # a dynamic list: its selection is shown by _selection_impact
    else:
        before, after = _members(change.before), _members(change.after)
    joins = [a for a in after if a not in set(before)]
    leaves = [a for a in before if a not in set(after)]
    out = []
    if change.previous_name:
        kept = {"subscribers": len((change.before or {}).get("subscribers", []))}
        if facts is not None:
            kept |= {"queued_deliveries": facts.pending_by_list.get(name, 0),
                     "held_posts": facts.held_by_list.get(name, 0)}
        out.append(Impact(change.kind, change.name, f"renamed from {change.previous_name}; keeps "
                          + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in kept.items()), kept))
    if joins or leaves:
        out.append(Impact(
            change.kind, change.name,
            f"receiving members {len(before)} → {len(after)} (+{len(joins)} join, -{len(leaves)} leave)",
            {"members_before": len(before), "members_after": len(after), "joins": len(joins),
             "leaves": len(leaves)},
            {"joins": tuple(joins[:EXAMPLES]), "leaves": tuple(leaves[:EXAMPLES])}))
    if facts is not None and change.action is Action.update:
        kept = {e["name"] for e in (change.after or {}).get("events", [])}
        for event in (change.before or {}).get("events", []):
            if event["name"] not in kept:
                n = facts.counters_by_event.get((name, event["name"]), 0)
                out.append(Impact(change.kind, change.name,
                                  f"removing event {event['name']} drops {_plural(n, 'subscriber counter')}",
                                  {"dropped_counters": n}))
    if change.restores:
        out.append(Impact(change.kind, change.name, "re-creates a deleted list and restores its runtime data"))
    return out


def _routing_impact(change: ResourceChange, facts: RuntimeFacts) -> list[Impact]:
    old, new = _routes(change.before), _routes(change.after)
    moved: dict[str, int] = {}
    count = 0
    for domain, n in sorted(facts.pending_domains.items()):
        a, b = describe(route_for(f"x@{domain}", old)), describe(route_for(f"x@{domain}", new))
        if a != b:
            count += n
            moved[f"{domain}: {a} → {b}"] = n
    if not count:
        return [Impact(change.kind, change.name, "reroutes no queued deliveries", {"rerouted_deliveries": 0})]
    return [Impact(change.kind, change.name, f"reroutes {_deliveries(count)}",
                   {"rerouted_deliveries": count}, {"rerouted": tuple(list(moved)[:EXAMPLES])})]


def _relay_impact(change: ResourceChange, facts: RuntimeFacts, routes_after) -> list[Impact]:
    routes = _routes(routes_after)
    via = sum(n for domain, n in facts.pending_domains.items()
              if describe(route_for(f"x@{domain}", routes)) == f"relay:{change.name}")
    what = "are routed through this relay" if change.action is Action.update else "were routed through it"
    return [Impact(change.kind, change.name, f"{_deliveries(via)} {what}",
                   {"queued_deliveries": via})]


def _selection_impact(change: ResourceChange, found) -> Impact:
    if isinstance(found, str):  # the directory could not be read
        return Impact(change.kind, change.name, f"selected members unknown: {found}")
    return Impact(change.kind, change.name,
                  f"selected members {found.before} → {found.after} "
                  f"(+{len(found.joins)}{'+' if len(found.joins) == EXAMPLES else ''} join, "
                  f"-{len(found.leaves)}{'+' if len(found.leaves) == EXAMPLES else ''} leave)",
                  {"selected_before": found.before, "selected_after": found.after},
                  {"joins": found.joins, "leaves": found.leaves})
