"""plan() is pure; the text renderer is tested with golden strings."""

from __future__ import annotations

import click

from listkeeper.reconcile.desired import DesiredResource, spec_hash
from listkeeper.reconcile.plan import MISSING, Action, FieldChange, plan
from listkeeper.reconcile.render import render_text
from listkeeper.store.config import AppliedResource


def desired(kind, name, spec):
    return {(kind, name): DesiredResource(kind, name, spec, spec_hash(spec), f"{name}.yaml:5:3")}


def applied(kind, name, spec):
    return {(kind, name): AppliedResource(kind, name, spec, spec_hash(spec), 1, f"{name}.yaml:5:3")}


def plain(text: str) -> str:
    return click.unstyle(text)


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
    update = next(c for c in result.changes if c.action is Action.update)
    assert update.fields == (FieldChange("spec.type", "discussion", "announce"),)
    assert (result.count(Action.create), result.count(Action.update), result.count(Action.delete)) == (1, 1, 1)


def test_deletion_is_held_back_without_prune():
    result = plan({}, applied("Relay", "old", {"host": "a"}), prune=False)
    (change,) = result.changes
    assert change.held_back and result.count(Action.delete) == 0 and result.has_changes


def test_subscribers_are_diffed_by_address():
    old = {"subscribers": [{"address": "a@x.org", "roles": ["regular"]}, {"address": "b@x.org", "roles": ["regular"]}]}
    new = {"subscribers": [{"address": "b@x.org", "roles": ["regular", "moderator"]}, {"address": "c@x.org", "roles": ["regular"]}]}
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
    assert plain(render_text(result)).endswith("No changes. The store matches the manifests.")


GOLDEN = """\
+ MailingList/a will be created  [a.yaml:5:3]
      + spec.type = "discussion"
~ MailingList/b will be updated in place  [b.yaml:5:3]
      ~ spec.type: "discussion" → "announce"
- MailingList/c is not in the manifests; kept (run with --prune to delete)  [c.yaml:5:3]
      - spec.type = "discussion"
~ Relay/r will be updated in place  [r.yaml:5:3]
      ~ spec.auth.password: (sensitive) → (sensitive)

Plan: 1 to create, 2 to update, 0 to delete. 1 deletion(s) held back: use --prune."""


def test_golden_text():
    want = {**desired("MailingList", "a", {"type": "discussion"}),
            **desired("MailingList", "b", {"type": "announce"}),
            **desired("Relay", "r", {"auth": {"password": {"env": "NEW"}}})}
    have = {**applied("MailingList", "b", {"type": "discussion"}),
            **applied("MailingList", "c", {"type": "discussion"}),
            **applied("Relay", "r", {"auth": {"password": {"file": "/run/secret"}}})}
    text = plain(render_text(plan(want, have)))
    assert text == GOLDEN
    assert "NEW" not in text and "/run/secret" not in text
