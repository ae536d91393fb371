"""SmtpAccount: a login on listkeeper's SMTP listener (SMTP AUTH), as on a submission port."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from .common import Manifest, SecretRef, Strict
from .passwords import password_problem

def _address_pattern(pattern: str) -> str:
    if "@" not in pattern or any(c.isspace() for c in pattern):
        raise ValueError(f"{pattern!r} is not an address pattern such as alice@example.org or *@example.org")
    return pattern.lower()


AddressPattern = Annotated[str, Field(min_length=3, max_length=254), AfterValidator(_address_pattern)]
Username = Annotated[str, Field(min_length=1, max_length=254, pattern=r"^[^\s\x00-\x1f\x7f]+$"),
                     AfterValidator(str.lower)]


class SmtpAccountSpec(Strict):
    username: Username = Field(description="The login name clients give (AUTH PLAIN or LOGIN); "
                                           "compared case-insensitively, unique among SmtpAccounts.")
    password: SecretRef = Field(
        description="The password, or a stored hash of it: argon2id ($argon2id$..., what `listkeeper "
                    "hash-password` writes) or scrypt ($scrypt$...). Read when a client logs in, never printed.")
    addresses: list[AddressPattern] = Field(
        min_length=1,
        description="Envelope senders (MAIL FROM) this account may use once logged in: alice@example.org, "
                    "*@example.org (shell-style, case-insensitive). Other senders are refused with 553 5.7.1.")

    def may_send_as(self, sender: str) -> bool:
        sender = sender.lower()
        return bool(sender) and any(fnmatchcase(sender, pattern) for pattern in self.addresses)


class SmtpAccount(Manifest):
    """A login for SMTP AUTH on the listener: who may submit mail, and as which senders."""

    KIND: ClassVar[str] = "SmtpAccount"
    kind: Literal["SmtpAccount"]
    spec: SmtpAccountSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        problem = password_problem(self.spec.password)
        return [(("spec", "password"), problem)] if problem else []
