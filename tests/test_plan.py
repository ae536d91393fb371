"""plan() and impacts() are pure; the text and JSON renderers are tested with golden outputs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from listkeeper.reconcile.desired import DesiredResource, spec_hash
from listkeeper.reconcile.impact import NO_STORE_NOTE, RuntimeFacts, impacts
from listkeeper.reconcile.plan import MISSING, Action, FieldChange, plan
from listkeeper.reconcile.render import render_text
from listkeeper.reconcile.render_json import plan_document
from listkeeper.store.config import AppliedResource

GOLDEN = Path(__file__).parent / "golden"


def desired(kind, name, spec, **extra):
    return {(kind, name): DesiredResource(kind, name, spec, spec_hash(spec), f"{name}.yaml:5:3", **extra)}


def applied(kind, name, spec, live=None, annotations=None):
    live = spec if live is None else live
    return {(kind, name): AppliedResource(kind, name, live, spec_hash(live), 1, f"{name}.yaml:5:3", spec,
                                          annotations or {})}


def members(*addresses, roles=("regular",)):
    return [{"address": a, "roles": list(roles)} for a in addresses]


def test_create_update_delete_noop():
    want = {**desired("MailingList", "a", {"type": "discussion"}),
            **desired("MailingList", "b", {"type": "announce"}),
            **desired("Domain", "d", {"domain": "example.org"})}
    have = {**applied("MailingList", "b", {"type": "discussion"}),
            **applied("MailingList", "c", {"type": "discussion"}),
            **applied("Domain", "d", {"domain": "example.org"})}
    result = plan(want, have, prune=True)
    actions = {c.key: c.action for c in result.changes}
    assert actions == {("MailingList", "a"): Action.create, ("MailingList", "b"): Action.update,
                       ("MailingList", "c"): Action.delete, ("Domain", "d"): Action.noop}
    assert [c.kind for c in result.changes] == ["Domain", "MailingList", "MailingList", "MailingList"]
    update = next(c for c in result.changes if c.action is Action.update)
    assert update.fields == (FieldChange("spec.type", "discussion", "announce"),)
    assert (result.count(Action.create), result.count(Action.update), result.count(Action.delete)) == (1, 1, 1)


def test_deletion_is_held_back_without_prune_or_with_the_annotation():
    have = {**applied("Relay", "old", {"host": "a"}),
            **applied("Relay", "keep", {"host": "b"}, annotations={"listkeeper/prune": "disabled"})}
    held = {c.name: c.held_back for c in plan({}, have, prune=False).changes}
    assert held == {"keep": "annotation listkeeper/prune: disabled", "old": "run with --prune to delete"}
    pruned = {c.name: c.held_back for c in plan({}, have, prune=True).changes}
    assert pruned == {"keep": "annotation listkeeper/prune: disabled", "old": ""}


def test_rename_keeps_the_resource():
    spec = {"type": "discussion", "subscribers": members("a@x.org")}
    result = plan(desired("MailingList", "new", spec, renamed_from="old"), applied("MailingList", "old", spec))
    (change,) = result.changes
    assert (change.action, change.name, change.previous_name, change.fields) == (Action.update, "new", "old", ())


def test_rename_is_ignored_once_done():
    spec = {"type": "discussion"}
    result = plan(desired("MailingList", "new", spec, renamed_from="old"), applied("MailingList", "new", spec))
    assert [c.action for c in result.changes] == [Action.noop]


def test_drift_is_shown_apart_and_restored():
    result = plan(desired("MailingList", "m", {"subject_prefix": "[m]"}),
                  applied("MailingList", "m", {"subject_prefix": "[m]"}, live={"subject_prefix": "[x]"}))
    (drift,) = result.drift
    assert drift.fields == (FieldChange("spec.subject_prefix", "[m]", "[x]"),)
    assert result.changes[0].fields == (FieldChange("spec.subject_prefix", "[x]", "[m]"),)


def test_subscribers_are_diffed_by_address():
    old = {"subscribers": [{"address": "a@x.org", "roles": ["regular"]}, {"address": "b@x.org", "roles": ["regular"]}]}
    new = {"subscribers": [{"address": "b@x.org", "roles": ["regular", "moderator"]},
                           {"address": "c@x.org", "roles": ["regular"]}]}
    result = plan(desired("MailingList", "m", new), applied("MailingList", "m", old))
    fields = {f.path: (f.old, f.new) for f in result.changes[0].fields}
    assert fields == {
        "spec.subscribers[a@x.org].roles": (["regular"], MISSING),
        "spec.subscribers[b@x.org].roles": (["regular"], ["regular", "moderator"]),
        "spec.subscribers[c@x.org].roles": (MISSING, ["regular"]),
    }


def test_identical_specs_give_no_changes():
    spec = {"type": "discussion", "subscribers": []}
    result = plan(desired("MailingList", "m", spec), applied("MailingList", "m", spec))
    assert not result.has_changes
    assert click.unstyle(render_text(result)).endswith("No changes. The store matches the manifests.")


ROUTES_OLD = {"routes": [{"match": "example.org", "transport": "pickup", "folder": "out"},
                         {"match": "*", "transport": "relay", "relay": "smarthost"}]}
ROUTES_NEW = {"routes": [{"match": "*.example.net", "transport": "discard"},
                         {"match": "*", "transport": "relay", "relay": "smarthost"}]}
FACTS = RuntimeFacts(pending_by_list={"c": 7}, held_by_list={"c": 2},
                     pending_domains={"example.org": 5, "mail.example.net": 3, "gmail.com": 11})


def scenario():
    want = {**desired("MailingList", "a", {"type": "discussion", "subscribers": members("x@y.org")}),
            **desired("MailingList", "b", {"type": "announce",
                                           "subscribers": members("b1@x.org", "b3@x.org", "b4@x.org")}),
            **desired("MailingList", "renamed", {"type": "discussion"}, renamed_from="old-name"),
            **desired("RoutingTable", "default", ROUTES_NEW),
            **desired("Relay", "smarthost", {"host": "smtp.example.net",
                                             "auth": {"username": "u", "password": {"env": "NEW_SECRET"}}})}
    have = {**applied("MailingList", "b", {"type": "discussion", "subscribers": members("b1@x.org", "b2@x.org")},
                      live={"type": "moderated", "subscribers": members("b1@x.org", "b2@x.org")}),
            **applied("MailingList", "c", {"type": "discussion", "subscribers": members("c1@x.org", "c2@x.org")}),
            **applied("MailingList", "old-name", {"type": "discussion"}),
            **applied("RoutingTable", "default", ROUTES_OLD),
            **applied("Relay", "smarthost", {"host": "smtp.example.net",
                                             "auth": {"username": "u", "password": {"file": "/run/secret"}}})}
    result = plan(want, have, prune=False, base_generation=4)
    return result, impacts(result, FACTS, ROUTES_NEW)


def test_impacts_count_runtime_data():
    _, found = scenario()
    by = {(i.kind, i.name, i.summary.split(" ")[0]): i for i in found}
    deleted = by[("MailingList", "c", "would")]
    assert dict(deleted.counts) == {"subscribers": 2, "queued_deliveries": 7, "held_posts": 2}
    members_b = by[("MailingList", "b", "receiving")]
    assert dict(members_b.counts) == {"members_before": 2, "members_after": 3, "joins": 2, "leaves": 1}
    assert members_b.examples == {"joins": ("b3@x.org", "b4@x.org"), "leaves": ("b2@x.org",)}
    routing = by[("RoutingTable", "default", "reroutes")]
    assert routing.counts == {"rerouted_deliveries": 8}
    assert routing.examples["rerouted"] == ("example.org: pickup:out → relay:smarthost",
                                            "mail.example.net: relay:smarthost → discard")
    relay = by[("Relay", "smarthost", "16")]
    assert relay.summary == "16 queued deliveries are routed through this relay"


def test_impacts_without_a_store_still_show_membership():
    result, _ = scenario()
    found = impacts(result, None)
    assert {(i.kind, i.name) for i in found} == {("MailingList", "a"), ("MailingList", "b"),
                                                  ("MailingList", "c"), ("MailingList", "renamed")}
    assert dict(next(i for i in found if i.name == "c").counts) == {"subscribers": 2}


@pytest.mark.parametrize("name", ["plan.txt", "plan.json"])
def test_golden_outputs(name):
    result, found = scenario()
    if name == "plan.txt":
        out = click.unstyle(render_text(result, found, NO_STORE_NOTE)) + "\n"
    else:
        out = json.dumps(plan_document(result, found, None, None), indent=2, ensure_ascii=False) + "\n"
    golden = GOLDEN / name
    if not golden.exists():  # first run writes it; review it, then commit it
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8")
    assert "/run/secret" in out and "NEW_SECRET" in out  # references are shown ...


def test_secret_values_are_never_resolved(monkeypatch):
    monkeypatch.setenv("NEW_SECRET", "the-actual-password")
    result, found = scenario()
    text = render_text(result, found) + json.dumps(plan_document(result, found))
    assert "the-actual-password" not in text  # ... their values never
