"""Who may post: small pure rules walked in order by one chain. First verdict wins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from listkeeper.manifests.lists import ListType, NonMembers, Role

from .snapshot import ListConfig


class Decision(str, Enum):
    accept = "accept"
    hold = "hold"
    reject = "reject"
    discard = "discard"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    rule: str
    reason: str
    reply: str = ""  # the SMTP reply for a rejection


@dataclass(frozen=True)
class Submission:
    """What the rules may look at: who sent it, what roles they hold, how big it is, and the markers it
    carries. Roles come from the store (looked up before the chain runs), so the rules stay pure."""

    senders: frozenset[str]  # envelope sender, From, Sender; lower-cased
    size: int
    list_ids: tuple[str, ...]
    x_loops: tuple[str, ...]
    selected: frozenset[str] = frozenset()  # dynamic lists whose query selects a sender
    roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))  # by list name
    automated: str = ""  # why the message is a bounce or an auto-reply, when it is one

Rule = Callable[[Submission, ListConfig], "Verdict | None"]


def list_id(lst: ListConfig) -> str:
    return f"{lst.local_part}.{lst.domain}"


def _roles(sub: Submission, lst: ListConfig) -> set[Role]:
    roles = {Role(r) for r in sub.roles.get(lst.name, ())}
    if lst.name in sub.selected:  # a selected member of a dynamic list, by any of its addresses
        roles.add(Role.regular)
    return roles


def loop(sub: Submission, lst: ListConfig) -> Verdict | None:
    ours = list_id(lst)
    carried = {v.rpartition("<")[2].partition(">")[0].strip().lower() for v in sub.list_ids}
    if lst.spec.address in sub.x_loops or ours in carried:
        return Verdict(Decision.discard, "loop", f"already distributed by {lst.spec.address}")
    return None


def max_size(sub: Submission, lst: ListConfig) -> Verdict | None:
    if sub.size > lst.spec.max_message_size:
        return Verdict(Decision.reject, "max_size", f"{sub.size} bytes is over the limit",
                       f"552 5.3.4 Message too big for list {lst.spec.address} "
                       f"(limit {lst.spec.max_message_size} bytes)")
    return None


def automated(sub: Submission, lst: ListConfig) -> Verdict | None:
    """Bounces and auto-replies sent to the posting address are never distributed."""
    if sub.automated:
        return Verdict(Decision.discard, "automated", sub.automated)
    return None


def banned(sub: Submission, lst: ListConfig) -> Verdict | None:
    if Role.deny in _roles(sub, lst):
        return Verdict(Decision.reject, "deny", "sender is on the deny list",
                       f"550 5.7.1 You may not post to {lst.spec.address}")
    return None


def moderator(sub: Submission, lst: ListConfig) -> Verdict | None:
    if Role.moderator in _roles(sub, lst):
        return Verdict(Decision.accept, "moderator", "sender is a moderator")
    return None


def cross_poster(sub: Submission, lst: ListConfig) -> Verdict | None:
    """Kavi's cross-posters: members of the lists named in spec.cross_posters may post to a discussion list."""
    if lst.spec.type is not ListType.discussion:
        return None
    for other in lst.spec.cross_posters:
        if set(sub.roles.get(other, ())) & {"regular", "digest", "poster", "moderator"}:
            return Verdict(Decision.accept, "cross_poster", f"sender is a member of list {other}")
    return None


def _non_member(lst: ListConfig, rule: str, reason: str, refusal: str) -> Verdict:
    action = lst.spec.non_members
    if action is NonMembers.reject:
        return Verdict(Decision.reject, rule, reason, f"550 5.7.1 {refusal}")
    if action is NonMembers.discard:
        return Verdict(Decision.discard, rule, reason)
    return Verdict(Decision.hold, rule, reason + "; held for the moderators")


def by_list_type(sub: Submission, lst: ListConfig) -> Verdict:
    roles = _roles(sub, lst)
    kind = lst.spec.type
    if kind is ListType.announce:
        if Role.poster in roles:
            return Verdict(Decision.accept, "poster", "sender may post to this announce list")
        return _non_member(lst, "announce", "only moderators and posters may post",
                           f"Only moderators may post to {lst.spec.address}")
    if kind is ListType.moderated:
        return Verdict(Decision.hold, "moderated", "every post to a moderated list is held")
    if roles & {Role.regular, Role.digest, Role.poster, Role.allow}:
        return Verdict(Decision.accept, "member", "sender may post to this discussion list")
    return _non_member(lst, "non_member", "sender is not a subscriber",
                       f"Only subscribers may post to {lst.spec.address}")


CHAIN: tuple[Rule, ...] = (loop, max_size, automated, banned, moderator, cross_poster, by_list_type)


def decide(sub: Submission, lst: ListConfig) -> Verdict:
    for rule in CHAIN:
        verdict = rule(sub, lst)
        if verdict is not None:
            return verdict
    raise AssertionError("by_list_type always decides")
