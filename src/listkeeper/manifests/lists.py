"""MailingList: an address, a type deciding who may post, and subscribers with roles."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Literal

from pydantic import Field

from .archive import Archive
from .common import Address, Duration, Manifest, Strict
from .digests import Digest
from .directory import Members, criterion_problems
from .events import EventSpec, event_problems


class ListType(str, Enum):
    announce = "announce"  # only moderators and posters post
    moderated = "moderated"  # every post is held, except the moderators'
    discussion = "discussion"  # subscribers post


class NonMembers(str, Enum):
    hold = "hold"  # held for the moderators (the default, as in Mailman)
    reject = "reject"  # refused at SMTP time with 550
    discard = "discard"  # dropped silently


class DmarcMitigation(str, Enum):
    """What a post from a domain with a strict DMARC policy becomes (as Mailman and Sympa offer)."""

    none = "none"  # sent as it came
    munge = "munge"  # From: "Name via List" <list@domain>, the poster in Reply-To, when p=reject|quarantine
    wrap = "wrap"  # the post as a message/rfc822 attachment of a message from the list, likewise
    always_munge = "always-munge"  # munged whatever the poster's domain publishes (no DNS lookup)


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


class Moderation(Strict):
    expiry: Duration = Field(default=14 * 86400, description="A held post not decided by then is dropped, "
                             "and its sender told so.")


class Bounces(Strict):
    """How bounces count against a subscriber, as Mailman's operators know it."""

    threshold: float = Field(default=5.0, gt=0, le=1000, description="Delivery to a subscriber is disabled "
                             "(and the list's owner told) when their bounce score reaches this.")
    hard: float = Field(default=1.0, ge=0, le=1000, description="Added to the score by a hard (permanent) bounce.")
    soft: float = Field(default=0.5, ge=0, le=1000, description="Added to the score by a soft (temporary) bounce, "
                        "e.g. a delay warning. A score grows at most once a day (UTC) per subscriber.")
    stale_after: Duration = Field(default=7 * 86400, gt=0, description="After this long without a bounce the score "
                                  "is stale: it is set back to zero, and the next bounce starts from there.")
    notify_owner: bool = Field(default=True, description="Tell the list's owner (its moderators) when a "
                               "subscriber's delivery is disabled.")


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
    non_members: NonMembers = Field(
        default=NonMembers.hold, description="What happens to a post from someone who may not post: hold | reject | discard.")
    cross_posters: list[str] = Field(
        default_factory=list, description="Names of other lists whose members may post to this discussion list.")
    moderation: Moderation = Field(default_factory=Moderation)
    confirmation_expiry: Duration = Field(
        default=7 * 86400, description="How long a subscribe or unsubscribe request by mail waits for its confirmation.")
    autoresponse_limit: int = Field(
        default=10, ge=1, le=1000, description="At most this many automatic replies to one address per day.")
    subscribers: list[Subscriber] = Field(default_factory=list)
    bounces: Bounces = Field(default_factory=Bounces, description="Bounce scores and when delivery is disabled.")
    events: list[EventSpec] = Field(default_factory=list, description="User-defined list events.")
    members: Members | None = Field(
        default=None, description="A dynamic list: regular members are the query's selection at post time.")
    digest: Digest = Field(default_factory=Digest, description="When digest members get the pending posts.")
    archive: Archive = Field(default_factory=Archive, description="Where accepted posts are kept.")
    dmarc: DmarcMitigation = Field(
        default=DmarcMitigation.none,
        description="none | munge | wrap | always-munge: when the poster's domain publishes a DMARC policy of "
                    "reject or quarantine, rewrite From to the list (munge) or wrap the post (wrap), so "
                    "receivers do not refuse it; always-munge rewrites every post.")


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
        for i, other in enumerate(spec.cross_posters):
            if other not in index.lists:
                found.append((("spec", "cross_posters", i), f"no MailingList named {other!r}"))
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
