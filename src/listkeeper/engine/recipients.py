"""Which envelope recipients we accept, decided from the snapshot alone."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from listkeeper.manifests.addresses import unverp

from .snapshot import ListConfig, Snapshot


class Target(str, Enum):
    post = "post"  # the list's posting address
    owner = "owner"  # LIST-owner: reaches the moderators
    bounces = "bounces"  # LIST-bounces: kept for bounce processing
    request = "request"  # LIST-request: commands; answered
    command = "command"  # mailserver@DOMAIN: the server's command address
    confirm = "confirm"  # LIST-confirm+TOKEN: answers a confirmation request or a moderation notice
    postmaster = "postmaster"


@dataclass(frozen=True)
class Recipient:
    address: str
    target: Target
    list: ListConfig | None = None
    subscriber: str | None = None  # for a VERP bounce address: whom the bounced copy was for
    token: str | None = None  # for LIST-confirm+TOKEN


@dataclass(frozen=True)
class Refusal:
    code: int
    text: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}"


def accept_recipient(address: str, snapshot: Snapshot) -> Recipient | Refusal:
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return Refusal(501, "5.1.3 Bad recipient address syntax")
    if domain not in snapshot.domains:
        return Refusal(550, "5.7.1 Relaying denied: we do not serve this domain")
    if local == "postmaster":
        return Recipient(address, Target.postmaster)
    if local == "mailserver":
        return Recipient(address, Target.command)
    found = snapshot.lists.get(address)
    if found is not None:
        return Recipient(address, Target.post, found)
    local, plus, token = local.partition("+")
    base, dash, suffix = local.rpartition("-")
    if dash and suffix in ("owner", "bounces", "request") and (not plus or suffix == "bounces"):
        found = snapshot.lists.get(f"{base}@{domain}")
        if found is not None:
            return Recipient(address, Target(suffix), found, unverp(token) if plus else None)
    if dash and suffix == "confirm" and plus and token.isalnum():
        found = snapshot.lists.get(f"{base}@{domain}")
        if found is not None:
            return Recipient(address, Target.confirm, found, token=token)
    return Refusal(550, "5.1.1 No such list or user here")
