"""Barring: inbound mail refused at SMTP time, before anything is stored (Mailtraq's barring rules)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import Manifest, Strict
from .routes import Pattern


class BarringSpec(Strict):
    senders: list[str] = Field(
        default_factory=list, description="Sender address patterns refused: spam@example.net, *@example.net, "
        "news-*@example.com (shell-style, case-insensitive).")
    domains: list[Pattern] = Field(
        default_factory=list, description="Sender domains refused: example.net, *.example.net.")
    max_size: int | None = Field(
        default=None, ge=1024, description="Bytes: larger messages are refused before they are stored.")
    reply: str = Field(default="Mail from this sender is not accepted here", max_length=200,
                       description="The text of the 550 reply for barred senders.")


class Barring(Manifest):
    """Rules that refuse inbound mail at SMTP time; every refusal is recorded for the barring report."""

    KIND: ClassVar[str] = "Barring"
    kind: Literal["Barring"]
    spec: BarringSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        found = []
        for i, pattern in enumerate(self.spec.senders):
            if "@" not in pattern:
                found.append((("spec", "senders", i), f"{pattern!r} is not an address pattern (it has no @); "
                              f"use spec.domains for whole domains"))
        return found
