"""Desired state: validated manifests as canonical spec documents with a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from listkeeper.manifests import Manifests, Resource


@dataclass(frozen=True)
class DesiredResource:
    kind: str
    name: str
    spec: dict[str, Any]
    hash: str
    source: str
    annotations: dict[str, str] = field(default_factory=dict)
    renamed_from: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


def spec_hash(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def desired_state(manifests: Manifests) -> dict[tuple[str, str], DesiredResource]:
    global _made
    out, made = {}, {}
    for resource in manifests.resources:
        found = _made.get(id(resource))
        if found is None or found[0] is not resource:
            found = (resource, _desired(resource))
        made[id(resource)] = found
        out[resource.key] = found[1]
    _made = made
    return out


# The last call's results by resource object. An engine's reloads load unchanged files from a cache
# (manifests.validation.FileCache) as the same objects, so only changed resources are dumped and hashed
# again. Keyed by identity and checked with `is`: a new object never gets an old result.
_made: dict[int, tuple[Resource, DesiredResource]] = {}


def _desired(resource: Resource) -> DesiredResource:
    spec = resource.manifest.spec.model_dump(mode="json", exclude_none=True)
    meta = resource.manifest.metadata
    return DesiredResource(resource.kind, resource.name, spec, spec_hash(spec), str(resource.location),
                           dict(meta.annotations), meta.renamed_from)
