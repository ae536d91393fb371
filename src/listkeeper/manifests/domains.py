"""Domain: a mail domain this server serves."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import Address, Hostname, Manifest, Strict


class DomainSpec(Strict):
    domain: Hostname = Field(description="The mail domain, e.g. example.org.")
    hostname: Hostname = Field(description="This server's host name, used in greetings and Message-IDs.")
    postmaster: Address = Field(description="Where mail to postmaster@domain and delivery reports go.")


class Domain(Manifest):
    """A mail domain served by listkeeper; mail for other domains is refused."""

    KIND: ClassVar[str] = "Domain"
    kind: Literal["Domain"]
    spec: DomainSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return []
