"""An accepted message -> one copy per list with list headers, and who receives each. Pure."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.utils import format_datetime, getaddresses

from listkeeper.manifests.lists import ListType, Role
from listkeeper.store import directory as member_directory
from listkeeper.store.queue import InboundRecord, PostRecord

from .headers import RawMessage
from .policy import Decision, Submission, decide, list_id
from .recipients import Recipient, Target
from . import events as list_events
from .commands import decide as may_fire, parse_event_command
from .policy import Submission
from .replies import command_reply, may_answer, request_reply
from .snapshot import ListConfig, Snapshot

LIST_HEADERS = ("list-id", "list-post", "list-unsubscribe", "list-help", "list-owner",
                "list-subscribe", "list-archive", "list-unsubscribe-post", "precedence", "return-path")


@dataclass(frozen=True)
class Refused:
    reply: str
    rule: str


def senders_of(message: RawMessage, mail_from: str) -> frozenset[str]:
    senders = {mail_from.lower()} if mail_from else set()
    for _, addr in getaddresses(message.get_all("from") + message.get_all("sender")):
        if addr:
            senders.add(addr.lower())
    return frozenset(senders)


def submission_of(message: RawMessage, mail_from: str, size: int,
                  selected: frozenset[str] = frozenset()) -> Submission:
    return Submission(senders_of(message, mail_from), size, tuple(message.get_all("list-id")),
                      tuple(v.lower() for v in message.get_all("x-loop")), selected)


def list_copy(message: RawMessage, lst: ListConfig, hostname: str, now: float) -> bytes:
    """The list's copy: RFC 2369/2919 headers, subject prefix, loop marker; the body untouched."""
    spec = lst.spec
    out = message.without(*LIST_HEADERS)
    prefix = spec.subject_prefix
    subject = message.get("subject")
    if prefix:
        if subject is None:
            out = out.replace("Subject", prefix)
        elif prefix not in subject:
            out = out.replace("Subject", f"{prefix} {subject}")
    if message.get("message-id") is None:
        out = out.with_field("Message-ID", f"<{uuid.uuid4().hex}@{hostname}>")
    if message.get("date") is None:
        out = out.with_field("Date", format_datetime(datetime.fromtimestamp(now, timezone.utc)))
    described = f'"{spec.description}" ' if spec.description and '"' not in spec.description else ""
    out = (out
           .with_field("List-Id", f"{described}<{list_id(lst)}>")
           .with_field("List-Post", "NO" if spec.type is ListType.announce else f"<mailto:{spec.address}>")
           .with_field("List-Help", f"<mailto:{lst.address_for('request')}?subject=help>")
           .with_field("List-Unsubscribe", f"<mailto:{lst.address_for('request')}?subject=unsubscribe>")
           .with_field("List-Owner", f"<mailto:{lst.address_for('owner')}>")
           .with_field("Precedence", "list")
           .with_field("X-Loop", spec.address))
    return out.to_bytes()


def _command(rcpt: Recipient, message: RawMessage, data: bytes, mail_from: str, submission: Submission,
             snapshot: Snapshot, now: float) -> tuple[list[PostRecord], list]:
    """A message to LIST-request@ or mailserver@: kept, acted on when it is `event NAME [ADDRESS]`, answered."""
    domain = rcpt.address.rpartition("@")[2]
    command = parse_event_command(message)
    lst = rcpt.list
    if command is not None and lst is None:  # mailserver@: the list of this domain with that event
        owners = [item for item in snapshot.lists.values()
                  if item.domain == domain and any(e.name == command.event for e in item.spec.events)]
        lst = owners[0] if len(owners) == 1 else None
    kept = [PostRecord(lst.name if lst else "", "request", "command", data, "", ())]
    actions = []
    if command is None:
        text = None
    elif lst is None:
        text = (f"No single list of {domain} has an event named {command.event!r}; "
                f"send the command to LIST-request@{domain} instead. Nothing happened.")
    else:
        decision = may_fire(lst, submission.senders, command)
        text = decision.text
        if decision.allowed:
            event = next((e for e in lst.spec.events if e.name == command.event), None)
            actions.append(lambda conn, at, lst=lst, event=event, name=command.event, who=decision.address:
                           list_events.fire(conn, lst, event, name, [who], snapshot, at))
    if not may_answer(message, mail_from):
        return kept, actions
    hostname = snapshot.hostname(domain)
    if text is None and rcpt.list is not None:
        reply = request_reply(rcpt.list, message, mail_from, hostname, now)
    else:
        text = text or "mailserver understands one command: event NAME [ADDRESS]. Nothing happened."
        sender = lst.address_for("request") if lst else f"mailserver@{domain}"
        reply = command_reply(sender, lst.spec.address if lst else sender, message, mail_from, hostname, now, text)
    bounce = lst.address_for("bounces") if lst else ""
    kept.append(PostRecord(lst.name if lst else "", "queued", "command: answered", reply, bounce, (mail_from,)))
    return kept, actions


def _with(recipients, extra: str):
    if callable(recipients):
        return lambda: itertools.chain(recipients(), (extra,))
    return recipients if extra in recipients else recipients + (extra,)


def regular_members(lst: ListConfig) -> tuple[str, ...]:
    """Who gets each post now; digest members are served by the digest runner (not yet built)."""
    return tuple(s.address for s in lst.spec.subscribers if Role.regular in s.roles)


def moderators(lst: ListConfig) -> tuple[str, ...]:
    return tuple(s.address for s in lst.spec.subscribers if Role.moderator in s.roles)


def receivers(lst: ListConfig, snapshot: Snapshot, now: float):
    """A static list's regular members, or, for a dynamic list, a stream of its query's selection
    taken when the spool writes the post (never a Python list of every member)."""
    if lst.spec.members is None:
        return regular_members(lst)
    directory = snapshot.directories[lst.spec.members.directory]
    query = tuple(lst.spec.members.query)
    moment = datetime.fromtimestamp(now, timezone.utc)
    return lambda: member_directory.stream(directory, query, moment)


def fan_out(data: bytes, mail_from: str, recipients: list[Recipient], snapshot: Snapshot,
            now: float | None = None, selected: frozenset[str] = frozenset()) -> InboundRecord | Refused:
    """Decide every recipient's fate; refuse the whole message if any list refuses it.

    `selected` names the dynamic lists whose query selects a sender (looked up by the caller)."""
    now = time.time() if now is None else now
    message = RawMessage.parse(data)
    submission = submission_of(message, mail_from, len(data), selected)
    posts: list[PostRecord] = []
    actions: list = []
    for rcpt in recipients:
        lst = rcpt.list
        if rcpt.target is Target.post:
            verdict = decide(submission, lst)
            if verdict.decision is Decision.reject:
                return Refused(verdict.reply, verdict.rule)
            state = {Decision.accept: "queued", Decision.hold: "held", Decision.discard: "discarded"}[verdict.decision]
            copy = list_copy(message, lst, snapshot.hostname(lst.domain), now)
            posts.append(PostRecord(lst.name, state, f"{verdict.rule}: {verdict.reason}", copy,
                                    lst.address_for("bounces"),
                                    receivers(lst, snapshot, now) if state == "queued" else (), verp=True,
                                    poster=next((s.address for s in lst.spec.subscribers
                                                 if s.address in submission.senders), None)))
        elif rcpt.target is Target.owner:
            posts.append(PostRecord(lst.name, "queued", "owner: forwarded to the moderators", data,
                                    lst.address_for("bounces"), moderators(lst)))
        elif rcpt.target is Target.bounces:
            whom = f" for {rcpt.subscriber}" if rcpt.subscriber else ""
            posts.append(PostRecord(lst.name, "bounce", f"bounce{whom}: kept for bounce processing", data,
                                    "", ()))
        elif rcpt.target in (Target.request, Target.command):
            more, act = _command(rcpt, message, data, mail_from, submission, snapshot, now)
            posts.extend(more)
            actions.extend(act)
        elif rcpt.target is Target.postmaster:
            domain = snapshot.domains[rcpt.address.rpartition("@")[2]]
            posts.append(PostRecord("", "queued", "postmaster: forwarded", data, mail_from,
                                    (domain.postmaster,)))
    archive = snapshot.delivery.archive_copy
    if archive:  # a copy of all outgoing mail to a local mailbox
        posts = [replace(p, recipients=_with(p.recipients, archive)) if p.state == "queued" else p for p in posts]
    unique = tuple(dict.fromkeys(r.address for r in recipients))
    return InboundRecord(mail_from, unique, data, snapshot.generation, tuple(posts), tuple(actions))
