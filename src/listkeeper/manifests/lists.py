"""MailingList: an address, a type deciding who may post, and subscribers with roles."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Literal

from pydantic import Field

from .common import Address, Manifest, Strict
from .directory import Members, criterion_problems
from .events import EventSpec, event_problems


class ListType(str, Enum):
    announce = "announce"  # only moderators and posters post
    moderated = "moderated"  # every post is held, except the moderators'
    discussion = "discussion"  # subscribers post


class Role(str, Enum):
    regular = "regular"
    digest = "digest"
    moderator = "moderator"
    poster = "poster"
    allow = "allow"
    deny = "deny"


class Subscriber(Strict):
    address: Address
    name: str | None = Field(default=None, max_length=200)
    roles: list[Role] = Field(default_factory=lambda: [Role.regular], min_length=1)


class MailingListSpec(Strict):
    address: Address = Field(description="The posting address, e.g. members@example.org.")
    type: ListType = Field(description="announce | moderated | discussion")
    description: str = Field(default="", max_length=500)
    subject_prefix: str | None = Field(
        default=None, max_length=100, description="Prepended to the subject, e.g. '[members]'."
    )
    max_message_size: int = Field(
        default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024, description="Bytes."
    )
    subscribers: list[Subscriber] = Field(default_factory=list)
    events: list[EventSpec] = Field(default_factory=list, description="User-defined list events.")
    members: Members | None = Field(
        default=None, description="A dynamic list: regular members are the query's selection at post time.")


class MailingList(Manifest):
    """A mailing list."""

    KIND: ClassVar[str] = "MailingList"
    kind: Literal["MailingList"]
    spec: MailingListSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        spec = self.spec
        found: list[tuple[tuple, str]] = []
        seen: dict[str, int] = {}
        for i, sub in enumerate(spec.subscribers):
            if sub.address in seen:
                found.append(
                    (("spec", "subscribers", i, "address"),
                     f"{sub.address} is listed twice (first at spec.subscribers[{seen[sub.address]}])")
                )
            seen.setdefault(sub.address, i)
            if Role.deny in sub.roles and len(sub.roles) > 1:
                found.append((("spec", "subscribers", i, "roles"), "role deny cannot be combined with others"))
        if spec.type in (ListType.announce, ListType.moderated) and not any(
            Role.moderator in s.roles for s in spec.subscribers
        ):
            found.append((("spec", "type"), f"an {spec.type.value} list needs at least one subscriber with role moderator"
                          if spec.type is ListType.announce else
                          "a moderated list needs at least one subscriber with role moderator"))
        if spec.members is not None:
            found.extend(_membership_problems(spec, index))
        found.extend(event_problems(spec.events))
        domain = spec.address.rpartition("@")[2]
        if domain not in index.served_domains:
            found.append((("spec", "address"), f"domain {domain} is not served by any Domain resource"))
        return found


def _membership_problems(spec: MailingListSpec, index) -> list[tuple[tuple, str]]:
    found: list[tuple[tuple, str]] = []
    for i, sub in enumerate(spec.subscribers):
        if Role.regular in sub.roles:
            found.append((("spec", "subscribers", i, "roles"), "a dynamic list's regular members come from its "
                          "query (spec.members); use digest, moderator, poster, allow or deny here"))
    directory = index.directories.get(spec.members.directory)
    if directory is None:
        return found + [(("spec", "members", "directory"), f"no MemberDirectory named {spec.members.directory!r}")]
    for i, criterion in enumerate(spec.members.query):
        for key, message in criterion_problems(criterion, directory):
            found.append((("spec", "members", "query", i, key), message))
    return found
