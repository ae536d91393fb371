"""plan(desired, applied) -> Plan: pure, synchronous, immutable. Rendering lives elsewhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from listkeeper.manifests.common import PRUNE_ANNOTATION
from listkeeper.store.config import AppliedResource

from .desired import DesiredResource



class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
# creation order: what others reference comes first; deletion runs the other way
KIND_ORDER = {"Domain": 0, "Relay": 1, "RoutingTable": 2, "SuppressionList": 3, "Barring": 3, "MemberDirectory": 4, "MailingList": 5,
              "Notification": 6, "Report": 6, "SmtpAccount": 6}


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
    held_back: str = ""  # why a deletion is not done: needs --prune, or the prune annotation
    previous_name: str | None = None  # renamed from
    restores: bool = False  # re-creates a soft-deleted list and its runtime data
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @property
    def changes_something(self) -> bool:
        return self.action is not Action.noop and not self.held_back


@dataclass(frozen=True)
class Drift:
    """The applied state was changed outside git: last applied -> now."""

    kind: str
    name: str
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class Plan:
    changes: tuple[ResourceChange, ...]
    drift: tuple[Drift, ...] = ()
    prune: bool = False
    base_generation: int | None = None  # the store's generation the plan was made against

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action and not c.held_back)

    @property
    def held_back(self) -> int:
        return sum(1 for c in self.changes if c.held_back)

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.noop for c in self.changes) or bool(self.drift)

    @property
    def writes(self) -> bool:
        return any(c.changes_something for c in self.changes)


def plan(desired: Mapping[tuple[str, str], DesiredResource],
         applied: Mapping[tuple[str, str], AppliedResource],
         deleted: Mapping[tuple[str, str], AppliedResource] | None = None,
         prune: bool = False, base_generation: int | None = None) -> Plan:
    deleted = deleted or {}
    renames = {
        (want.kind, want.renamed_from): want.key for want in desired.values()
        if want.renamed_from and want.key not in applied and (want.kind, want.renamed_from) in applied
        and (want.kind, want.renamed_from) not in desired
    }
    changes = []
    for key in sorted(set(desired) | set(applied), key=lambda k: (KIND_ORDER.get(k[0], 9), k)):
        if key in renames:
            continue  # shown under its new name
        want = desired.get(key)
        old_key = next((old for old, new in renames.items() if new == key), None)
        have = applied.get(old_key or key)
        if have is None:
            changes.append(ResourceChange(want.kind, want.name, Action.create, diff_fields({}, want.spec, "spec"),
                                          None, want.spec, want.source, restores=key in deleted,
                                          annotations=want.annotations))
        elif want is None:
            held = ""
            if have.annotations.get(PRUNE_ANNOTATION) == "disabled":
                held = f"annotation {PRUNE_ANNOTATION}: disabled"
            elif not prune:
                held = "run with --prune to delete"
            changes.append(ResourceChange(have.kind, have.name, Action.delete, diff_fields(have.spec, {}, "spec"),
                                          have.spec, None, have.source, held_back=held,
                                          annotations=have.annotations))
        else:
            same = want.hash == have.hash and want.spec == have.spec
            fields = () if same else diff_fields(have.spec, want.spec, "spec")
            moved = old_key[1] if old_key else None
            action = Action.update if fields or moved or want.annotations != have.annotations else Action.noop
            changes.append(ResourceChange(want.kind, want.name, action, fields, have.spec, want.spec, want.source,
                                          previous_name=moved, annotations=want.annotations))
    drift = tuple(
        Drift(have.kind, have.name, diff_fields(have.last_applied, have.spec, "spec"))
        for key, have in sorted(applied.items())
        if have.last_applied is not None and have.last_applied != have.spec
    )
    return Plan(tuple(changes), drift, prune, base_generation)


def diff_fields(old: Any, new: Any, path: str) -> tuple[FieldChange, ...]:
    """Leaf-by-leaf differences; lists of subscribers are keyed by address, other lists by index."""
    flat_old, flat_new = flatten(old, path), flatten(new, path)
    order = {p: i for i, p in enumerate(flat_new)}
    order.update({p: len(flat_new) + i for i, p in enumerate(flat_old) if p not in order})
    out = []
    for leaf in sorted(set(flat_old) | set(flat_new), key=order.__getitem__):
        a, b = flat_old.get(leaf, MISSING), flat_new.get(leaf, MISSING)
        if a != b:
            out.append(FieldChange(leaf, a, b))
    return tuple(out)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= {"env", "file"}


def flatten(value: Any, path: str) -> dict[str, Any]:
    if isinstance(value, dict) and not is_secret(value):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{path}.{k}"))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = [v.get("address") for v in value]
        out = {}
        if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
            for k, v in zip(keys, value):
                rest = {f: x for f, x in v.items() if f != "address"}
                out.update(flatten(rest, f"{path}[{k}]") if rest else {f"{path}[{k}]": k})
            return out
        for i, v in enumerate(value):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}
