"""Reconcile: desired state from manifests, diffed against the store's applied state, then applied."""

from __future__ import annotations

from listkeeper.manifests import Manifests
from listkeeper.store import Store
from listkeeper.store import config as applied_config

from .apply import apply
from .desired import desired_state
from .plan import Action, Plan, plan
from .render import render_text


def plan_for(manifests: Manifests, store: Store, prune: bool = False) -> Plan:
    with store.engine.connect() as conn:
        applied = applied_config.applied_resources(conn)
    return plan(desired_state(manifests), applied, prune)


__all__ = ["Action", "Plan", "apply", "desired_state", "plan", "plan_for", "render_text"]
