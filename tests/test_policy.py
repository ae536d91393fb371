"""Posting rules and the chain, as pure functions of (submission, list)."""

from __future__ import annotations

import pytest

from listkeeper.engine.policy import Decision, Submission, decide
from listkeeper.engine.snapshot import ListConfig
from listkeeper.manifests.lists import MailingListSpec

SUBSCRIBERS = [
    {"address": "mod@example.org", "roles": ["moderator"]},
    {"address": "reg@example.org"},
    {"address": "dig@example.org", "roles": ["digest"]},
    {"address": "poster@example.org", "roles": ["poster"]},
    {"address": "allow@example.org", "roles": ["allow"]},
    {"address": "deny@example.org", "roles": ["deny"]},
]


def lst(kind: str, **extra) -> ListConfig:
    return ListConfig("l", MailingListSpec(address="l@example.org", type=kind, subscribers=SUBSCRIBERS, **extra))


def sub(sender: str, size: int = 2000, list_ids=(), x_loops=()) -> Submission:
    return Submission(frozenset({sender}), size, tuple(list_ids), tuple(x_loops))


@pytest.mark.parametrize("kind,sender,decision,rule", [
    ("announce", "mod@example.org", Decision.accept, "moderator"),
    ("announce", "poster@example.org", Decision.accept, "poster"),
    ("announce", "reg@example.org", Decision.reject, "announce"),
    ("announce", "stranger@example.net", Decision.reject, "announce"),
    ("discussion", "reg@example.org", Decision.accept, "member"),
    ("discussion", "dig@example.org", Decision.accept, "member"),
    ("discussion", "allow@example.org", Decision.accept, "member"),
    ("discussion", "mod@example.org", Decision.accept, "moderator"),
    ("discussion", "stranger@example.net", Decision.reject, "non_member"),
    ("discussion", "deny@example.org", Decision.reject, "deny"),
    ("moderated", "reg@example.org", Decision.hold, "moderated"),
    ("moderated", "stranger@example.net", Decision.hold, "moderated"),
    ("moderated", "mod@example.org", Decision.accept, "moderator"),
    ("moderated", "deny@example.org", Decision.reject, "deny"),
])
def test_who_may_post(kind, sender, decision, rule):
    verdict = decide(sub(sender), lst(kind))
    assert (verdict.decision, verdict.rule) == (decision, rule)
    if decision is Decision.reject:
        assert verdict.reply.startswith("550 5.7.1 ")


def test_loop_is_discarded_before_anything_else():
    assert decide(sub("mod@example.org", x_loops=["l@example.org"]), lst("announce")).rule == "loop"
    assert decide(sub("reg@example.org", list_ids=["Our list <l.example.org>"]), lst("discussion")).rule == "loop"


def test_too_big_is_rejected_with_552():
    verdict = decide(sub("reg@example.org", size=5000), lst("discussion", max_message_size=4096))
    assert verdict.decision is Decision.reject and verdict.reply.startswith("552 5.3.4 ")


def test_another_lists_id_is_not_a_loop():
    for other in ["<otherl.example.org>", "<l.example.org.evil>", "Other <xl.example.org>"]:
        assert decide(sub("reg@example.org", list_ids=[other]), lst("discussion")).rule == "member"
