"""Who may post: small pure rules walked in order by one chain. First verdict wins."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from listkeeper.manifests.lists import ListType, Role

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
    """What the rules may look at: who sent it, how big it is, and the loop markers it carries."""

    senders: frozenset[str]  # envelope sender, From, Sender; lower-cased
    size: int
    list_ids: tuple[str, ...]
    x_loops: tuple[str, ...]
    selected: frozenset[str] = frozenset()  # dynamic lists whose query selects a sender

Rule = Callable[[Submission, ListConfig], "Verdict | None"]


def list_id(lst: ListConfig) -> str:
    return f"{lst.local_part}.{lst.domain}"


def _roles(sub: Submission, lst: ListConfig) -> set[Role]:
    roles: set[Role] = set()
    for s in lst.spec.subscribers:
        if s.address in sub.senders:
            roles.update(s.roles)
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


def banned(sub: Submission, lst: ListConfig) -> Verdict | None:
    if Role.deny in _roles(sub, lst):
        return Verdict(Decision.reject, "deny", "sender is on the deny list",
                       f"550 5.7.1 You may not post to {lst.spec.address}")
    return None


def moderator(sub: Submission, lst: ListConfig) -> Verdict | None:
    if Role.moderator in _roles(sub, lst):
        return Verdict(Decision.accept, "moderator", "sender is a moderator")
    return None


def by_list_type(sub: Submission, lst: ListConfig) -> Verdict:
    roles = _roles(sub, lst)
    kind = lst.spec.type
    if kind is ListType.announce:
        if Role.poster in roles:
            return Verdict(Decision.accept, "poster", "sender may post to this announce list")
        return Verdict(Decision.reject, "announce", "only moderators and posters may post",
                       f"550 5.7.1 Only moderators may post to {lst.spec.address}")
    if kind is ListType.moderated:
        return Verdict(Decision.hold, "moderated", "every post to a moderated list is held")
    if roles & {Role.regular, Role.digest, Role.poster, Role.allow}:
        return Verdict(Decision.accept, "member", "sender may post to this discussion list")
    return Verdict(Decision.reject, "non_member", "sender is not a subscriber",
                   f"550 5.7.1 Only subscribers may post to {lst.spec.address}")


CHAIN: tuple[Rule, ...] = (loop, max_size, banned, moderator, by_list_type)


def decide(sub: Submission, lst: ListConfig) -> Verdict:
    for rule in CHAIN:
        verdict = rule(sub, lst)
        if verdict is not None:
            return verdict
    raise AssertionError("by_list_type always decides")
