"""Recipient domain -> route. Ordered, first match wins (the rule lives with the manifest model)."""

from listkeeper.manifests.routes import describe, matches, route_for

__all__ = ["describe", "matches", "route_for"]
