"""Domain: a mail domain this server serves."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from .common import Address, Hostname, Manifest, Strict

BASE_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"

BaseUrl = Annotated[str, Field(pattern=BASE_URL_PATTERN, max_length=200), AfterValidator(lambda v: v.rstrip("/"))]


class DomainSpec(Strict):
    domain: Hostname = Field(description="The mail domain, e.g. example.org.")
    hostname: Hostname = Field(description="This server's host name, used in greetings and Message-IDs.")
    postmaster: Address = Field(description="Where mail to postmaster@domain and delivery reports go.")
    web_base_url: BaseUrl | None = Field(
        default=None,
        description="The public address of listkeeper's web pages for this domain's lists, e.g. "
                    "https://lists.example.org: each post's one-click unsubscribe link (RFC 8058) starts with "
                    "it. Point it at `listkeeper serve`'s HTTP listener, usually through a TLS proxy. "
                    "Default: serve's --base-url.")


class Domain(Manifest):
    """A mail domain served by listkeeper; mail for other domains is refused."""

    KIND: ClassVar[str] = "Domain"
    kind: Literal["Domain"]
    spec: DomainSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return []
