"""Posting rules and the chain, as pure functions of (submission, list)."""

from __future__ import annotations

import pytest

from listkeeper.engine.membership import from_manifests
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


def sub(sender: str, size: int = 2000, list_ids=(), x_loops=(), kind: str = "discussion") -> Submission:
    senders = frozenset({sender})
    membership = from_manifests(senders, [lst(kind)])
    return Submission(senders, size, tuple(list_ids), tuple(x_loops), roles=membership.roles)


@pytest.mark.parametrize("kind,sender,decision,rule", [
    ("announce", "mod@example.org", Decision.accept, "moderator"),
    ("announce", "poster@example.org", Decision.accept, "poster"),
    ("announce", "reg@example.org", Decision.hold, "announce"),
    ("announce", "stranger@example.net", Decision.hold, "announce"),
    ("discussion", "reg@example.org", Decision.accept, "member"),
    ("discussion", "dig@example.org", Decision.accept, "member"),
    ("discussion", "allow@example.org", Decision.accept, "member"),
    ("discussion", "mod@example.org", Decision.accept, "moderator"),
    ("discussion", "stranger@example.net", Decision.hold, "non_member"),
    ("discussion", "deny@example.org", Decision.reject, "deny"),
    ("moderated", "reg@example.org", Decision.hold, "moderated"),
    ("moderated", "stranger@example.net", Decision.hold, "moderated"),
    ("moderated", "mod@example.org", Decision.accept, "moderator"),
    ("moderated", "deny@example.org", Decision.reject, "deny"),
])
def test_who_may_post(kind, sender, decision, rule):
    verdict = decide(sub(sender, kind=kind), lst(kind))
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


@pytest.mark.parametrize("action,decision", [("hold", Decision.hold), ("reject", Decision.reject),
                                             ("discard", Decision.discard)])
def test_what_happens_to_non_members_is_the_lists_choice(action, decision):
    verdict = decide(sub("stranger@example.net"), lst("discussion", non_members=action))
    assert (verdict.decision, verdict.rule) == (decision, "non_member")
    if decision is Decision.reject:
        assert verdict.reply == "550 5.7.1 Only subscribers may post to l@example.org"


def test_bounces_and_auto_replies_to_the_post_address_are_discarded():
    automated = Submission(frozenset({"reg@example.org"}), 100, (), (), automated="an auto-reply (X-Autoreply)",
                           roles={"l": frozenset({"regular"})})
    verdict = decide(automated, lst("discussion"))
    assert (verdict.decision, verdict.rule, verdict.reason) == (Decision.discard, "automated",
                                                                "an auto-reply (X-Autoreply)")


def test_members_of_a_cross_poster_list_may_post():
    other_member = Submission(frozenset({"x@example.net"}), 100, (), (), roles={"board": frozenset({"regular"})})
    assert decide(other_member, lst("discussion", cross_posters=["board"])).rule == "cross_poster"
    assert decide(other_member, lst("discussion")).rule == "non_member"
    denied = Submission(frozenset({"deny@example.org"}), 100, (), (),
                        roles={"board": frozenset({"regular"}), "l": frozenset({"deny"})})
    assert decide(denied, lst("discussion", cross_posters=["board"])).rule == "deny"


def test_automated_reasons():
    from listkeeper.engine.fanout import automated_reason
    from listkeeper.engine.headers import RawMessage

    def reason(head: str, mail_from="x@example.net"):
        return automated_reason(RawMessage.parse(head.encode() + b"\r\nbody"), mail_from)

    assert reason("From: x@example.net\r\n") == ""
    assert reason("From: x@example.net\r\nAuto-Submitted: no\r\n") == ""
    assert reason("From: x@example.net\r\n", "") == "a bounce (null envelope sender)"
    assert reason("From: x@example.net\r\n", "MAILER-DAEMON@example.net").startswith("a bounce")
    assert reason("Auto-Submitted: auto-replied\r\n") == "an automatic message (Auto-Submitted: auto-replied)"
    assert reason("X-Autoreply: yes\r\n") == "an auto-reply (X-Autoreply)"
