"""Domain: a mail domain this server serves."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from .common import Address, Hostname, Manifest, SecretRef, Strict
from .signing_keys import dkim_key_problem

BASE_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"

BaseUrl = Annotated[str, Field(pattern=BASE_URL_PATTERN, max_length=200), AfterValidator(lambda v: v.rstrip("/"))]


HEADER_NAME_PATTERN = r"^[!-9;-~]+$"  # RFC 5322 field-name: printable ASCII but ':'
SELECTOR_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"

# What receivers (Gmail, Yahoo) look at, and what a forwarder must not change unnoticed.
DEFAULT_SIGNED_HEADERS = (
    "from", "reply-to", "sender", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "list-id", "list-post", "list-help",
    "list-owner", "list-unsubscribe", "list-unsubscribe-post", "auto-submitted",
)
# Added or changed by every relay on the way (RFC 6376 5.4), or a signature itself.
NEVER_SIGNED = frozenset({"return-path", "received", "bcc", "resent-bcc", "dkim-signature",
                          "arc-seal", "arc-message-signature", "arc-authentication-results",
                          "authentication-results"})

HeaderName = Annotated[str, Field(pattern=HEADER_NAME_PATTERN, max_length=100), AfterValidator(str.lower)]


class Dkim(Strict):
    """DKIM signing (RFC 6376) of this domain's outgoing mail, with an RSA key."""

    selector: str = Field(pattern=SELECTOR_PATTERN, max_length=63,
                          description="The selector: the public key is published as a TXT record at "
                                      "SELECTOR._domainkey.DOMAIN.")
    key: SecretRef = Field(description="The RSA private key in PEM (PKCS#1 or PKCS#8), e.g. {file: "
                                       "/etc/listkeeper/dkim/example.org.pem}; 2048 bits recommended.")
    headers: list[HeaderName] = Field(
        default_factory=lambda: list(DEFAULT_SIGNED_HEADERS), min_length=1,
        description="Header fields to sign (From is required). Each is signed once per occurrence and "
                    "once more, so that none can be added after signing.")
    arc: bool = Field(
        default=False,
        description="Also ARC-seal (RFC 8617) the posts this domain's lists send on, with this key: receivers "
                    "then see that the post passed DKIM and DMARC when it reached the list, though the list "
                    "changed it (subject prefix, DMARC munge). Off by default: each post then costs DNS lookups "
                    "of the poster's DKIM key and DMARC record, and each copy two more RSA signatures.")

    @field_validator("headers")
    @classmethod
    def _signable(cls, value: list[str]) -> list[str]:
        if "from" not in value:
            raise ValueError("From must be signed (RFC 6376 5.4)")
        bad = sorted(set(value) & NEVER_SIGNED)
        if bad:
            raise ValueError(f"{', '.join(bad)} must not be signed: relays add or change them on the way")
        return list(dict.fromkeys(value))


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
    dkim: Dkim | None = Field(
        default=None,
        description="Sign outgoing mail of this domain with DKIM: every message whose From (else envelope "
                    "sender) is in this domain or below it, as it leaves for each recipient.")


class Domain(Manifest):
    """A mail domain served by listkeeper; mail for other domains is refused."""

    KIND: ClassVar[str] = "Domain"
    kind: Literal["Domain"]
    spec: DomainSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        dkim = self.spec.dkim
        if dkim is None:
            return []
        problem = dkim_key_problem(dkim.key)
        return [(("spec", "dkim", "key"), problem)] if problem else []
