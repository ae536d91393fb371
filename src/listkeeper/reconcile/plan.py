"""plan(desired, applied) -> Plan: pure, synchronous, immutable. Rendering lives in render.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from listkeeper.store.config import AppliedResource

from .desired import DesiredResource

MISSING = object()


class Action(str, Enum):
    create = "create"
    update = "update"
    delete = "delete"
    noop = "no-op"


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any  # MISSING when the field is new
    new: Any  # MISSING when the field is gone


@dataclass(frozen=True)
class ResourceChange:
    kind: str
    name: str
    action: Action
    fields: tuple[FieldChange, ...]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    source: str
    held_back: bool = False  # a deletion that needs --prune

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


@dataclass(frozen=True)
class Plan:
    changes: tuple[ResourceChange, ...]
    prune: bool

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action and not c.held_back)

    @property
    def held_back(self) -> int:
        return sum(1 for c in self.changes if c.held_back)

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.noop for c in self.changes)


def plan(desired: Mapping[tuple[str, str], DesiredResource],
         applied: Mapping[tuple[str, str], AppliedResource], prune: bool = False) -> Plan:
    changes = []
    for key in sorted(set(desired) | set(applied)):
        want, have = desired.get(key), applied.get(key)
        if have is None:
            changes.append(ResourceChange(want.kind, want.name, Action.create,
                                          diff_fields({}, want.spec, "spec"), None, want.spec, want.source))
        elif want is None:
            changes.append(ResourceChange(have.kind, have.name, Action.delete,
                                          diff_fields(have.spec, {}, "spec"), have.spec, None, have.source,
                                          held_back=not prune))
        elif want.hash != have.hash or want.spec != have.spec:
            changes.append(ResourceChange(want.kind, want.name, Action.update,
                                          diff_fields(have.spec, want.spec, "spec"), have.spec, want.spec,
                                          want.source))
        else:
            changes.append(ResourceChange(want.kind, want.name, Action.noop, (), have.spec, want.spec,
                                          want.source))
    return Plan(tuple(changes), prune)


def diff_fields(old: Any, new: Any, path: str) -> tuple[FieldChange, ...]:
    """Leaf-by-leaf differences; lists of subscribers are keyed by address, other lists by index."""
    flat_old, flat_new = flatten(old, path), flatten(new, path)
    out = []
    for leaf in sorted(set(flat_old) | set(flat_new), key=lambda p: list(flat_new).index(p)
                       if p in flat_new else len(flat_new) + list(flat_old).index(p)):
        a, b = flat_old.get(leaf, MISSING), flat_new.get(leaf, MISSING)
        if a != b:
            out.append(FieldChange(leaf, a, b))
    return tuple(out)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value and set(value) <= {"env", "file"}


def flatten(value: Any, path: str) -> dict[str, Any]:
    if isinstance(value, dict) and not is_secret(value):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{path}.{k}"))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = [v.get("address") for v in value]
        if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
            out = {}
            for k, v in zip(keys, value):
                rest = {f: x for f, x in v.items() if f != "address"}
                out.update(flatten(rest, f"{path}[{k}]") if rest else {f"{path}[{k}]": k})
            return out
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}
