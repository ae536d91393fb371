"""Routing and the delivery lifecycle: pure tables."""

from __future__ import annotations

import pytest

from listkeeper.delivery.lifecycle import Event, IllegalTransition, RetryPolicy, State, next_state
from listkeeper.delivery.routing import matches, route_for
from listkeeper.manifests.routes import RoutingTableSpec

ROUTES = RoutingTableSpec(routes=[
    {"match": "example.org", "transport": "pickup", "folder": "out"},
    {"match": "*.example.net", "transport": "relay", "relay": "smarthost"},
    {"match": "junk.test", "transport": "discard"},
    {"match": "*", "transport": "mx"},
]).routes


@pytest.mark.parametrize("pattern,domain,expected", [
    ("example.org", "example.org", True), ("example.org", "EXAMPLE.org", True),
    ("example.org", "sub.example.org", False), ("*.example.org", "sub.example.org", True),
    ("*.example.org", "a.b.example.org", True), ("*.example.org", "example.org", False),
    ("*.example.org", "badexample.org", False), ("*", "anything.test", True),
])
def test_matches(pattern, domain, expected):
    assert matches(pattern, domain) is expected


@pytest.mark.parametrize("rcpt,transport", [
    ("a@example.org", "pickup"), ("a@mail.example.net", "relay"), ("a@example.net", "mx"),
    ("a@junk.test", "discard"), ("a@elsewhere.com", "mx"),
])
def test_first_match_wins(rcpt, transport):
    assert route_for(rcpt, ROUTES).transport == transport


def test_no_route():
    assert route_for("a@b.c", ROUTES[:1]) is None


@pytest.mark.parametrize("state,event,after", [
    (State.queued, Event.claim, State.sending), (State.deferred, Event.claim, State.sending),
    (State.sending, Event.delivered, State.delivered), (State.sending, Event.temporary, State.deferred),
    (State.sending, Event.permanent, State.failed), (State.sending, Event.expired, State.failed),
])
def test_transitions(state, event, after):
    assert next_state(state, event) is after


@pytest.mark.parametrize("state,event", [(State.delivered, Event.claim), (State.queued, Event.delivered),
                                         (State.failed, Event.temporary)])
def test_illegal_transitions(state, event):
    with pytest.raises(IllegalTransition):
        next_state(state, event)


def test_retry_backoff_until_lifetime():
    policy = RetryPolicy(first=60, factor=2, ceiling=600, lifetime=3600)
    assert policy.next_attempt(1, created_at=0, now=0) == 60
    assert policy.next_attempt(3, created_at=0, now=100) == 340
    assert policy.next_attempt(10, created_at=0, now=1000) == 1600
    assert policy.next_attempt(10, created_at=0, now=3300) is None
