"""SuppressionList: addresses and domains never sent to."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import Address, Manifest, Strict
from .routes import Pattern


class SuppressionListSpec(Strict):
    addresses: list[Address] = Field(default_factory=list)
    domains: list[Pattern] = Field(default_factory=list, description="example.org, *.example.org")


class SuppressionList(Manifest):
    """Recipients checked before every send; a match is recorded as suppressed, not failed."""

    KIND: ClassVar[str] = "SuppressionList"
    kind: Literal["SuppressionList"]
    spec: SuppressionListSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return []
