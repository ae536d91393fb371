"""Mail commands: `event NAME [ADDRESS]` to LIST-request@ or mailserver@. Parsing and permission are pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from listkeeper.manifests.events import BUILT_IN
from listkeeper.manifests.lists import Role

from .headers import RawMessage
from .snapshot import ListConfig

_EVENT = re.compile(r"^\s*event\s+([a-z][a-z0-9_-]*)(?:\s+<?([^\s<>@]+@[^\s<>]+?)>?)?\s*$", re.IGNORECASE)
MAX_LINES = 5


@dataclass(frozen=True)
class EventCommand:
    event: str
    address: str | None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    address: str  # whom the event fires for
    text: str  # the reply's explanation


def parse_event_command(message: RawMessage) -> EventCommand | None:
    """The command in the subject or in the first non-empty lines of a plain-text body."""
    lines = [message.get("subject") or ""]
    body = message.body.decode("utf-8", "replace").splitlines()
    lines += [line for line in body if line.strip()][:MAX_LINES]
    for line in lines:
        match = _EVENT.match(line.strip())
        if match:
            return EventCommand(match.group(1).lower(), (match.group(2) or "").lower() or None)
    return None


def decide(lst: ListConfig, senders: frozenset[str], command: EventCommand) -> Decision:
    """A subscriber may fire an event for themself; only a moderator may fire it for someone else."""
    spec = lst.spec
    names = {e.name for e in spec.events} | set(BUILT_IN)
    receiving = {s.address for s in spec.subscribers if {Role.regular, Role.digest} & set(s.roles)}
    moderators = {s.address for s in spec.subscribers if Role.moderator in s.roles}
    sender = next(iter(sorted(senders & (receiving | moderators))), next(iter(sorted(senders)), ""))
    target = command.address or sender
    if command.event not in names:
        return Decision(False, target, f"{spec.address} has no event named {command.event!r}; nothing happened.")
    if command.address and command.address not in senders and not senders & moderators:
        return Decision(False, target, f"Only a moderator of {spec.address} may fire an event for someone else; "
                                       f"nothing happened.")
    if target not in receiving:
        return Decision(False, target, f"{target} is not subscribed to {spec.address}; nothing happened.")
    return Decision(True, target, f"Event {command.event} fired for {target} on {spec.address}.")
