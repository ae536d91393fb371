"""Desired state: validated manifests as canonical spec documents with a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from listkeeper.manifests import Manifests


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
    out = {}
    for resource in manifests.resources:
        spec = resource.manifest.spec.model_dump(mode="json", exclude_none=True)
        meta = resource.manifest.metadata
        out[resource.key] = DesiredResource(resource.kind, resource.name, spec, spec_hash(spec),
                                            str(resource.location), dict(meta.annotations), meta.renamed_from)
    return out
