"""An accepted message -> one copy per list with list headers, and who receives each. Pure."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.utils import format_datetime, getaddresses

import logging
import secrets

from listkeeper.logs import note
from listkeeper.manifests.lists import ListType
from listkeeper.store.queue import Hold, InboundRecord, PostRecord

from . import commands, moderation
from .authresults import InboundAuth, arc_seals, our_ids, stamped, without_forged
from .dmarc import PosterPolicy, mitigated
from .headers import RawMessage
from .membership import Membership, from_manifests, lists_consulted, moderators, receivers
from .policy import Decision, Submission, decide, list_id
from .recipients import Recipient, Target
from .replies import automated_reason
from .signatures import keep_valid_signatures
from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.policy")

PER_RECIPIENT = frozenset({"list-unsubscribe", "list-unsubscribe-post"})  # set again at delivery
LIST_HEADERS = ("list-id", "list-post", "list-unsubscribe", "list-help", "list-owner",
                "list-subscribe", "list-archive", "list-unsubscribe-post", "precedence", "return-path")


@dataclass(frozen=True)
class Refused:
    reply: str
    rule: str
    reason: str = ""
    list_name: str = ""  # the list whose posting rules refused it ("" when not a list's verdict)


def senders_of(message: RawMessage, mail_from: str) -> frozenset[str]:
    senders = {mail_from.lower()} if mail_from else set()
    for _, addr in getaddresses(message.get_all("from") + message.get_all("sender")):
        if addr:
            senders.add(addr.lower())
    return frozenset(senders)


def submission_of(message: RawMessage, mail_from: str, size: int,
                  membership: Membership | None = None) -> Submission:
    membership = membership or Membership()
    return Submission(senders_of(message, mail_from), size, tuple(message.get_all("list-id")),
                      tuple(v.lower() for v in message.get_all("x-loop")), membership.selected,
                      membership.roles, automated_reason(message, mail_from))


def unsubscribe_mailto(lst: ListConfig) -> str:
    """The List-Unsubscribe value every list copy is stored with. Delivery recognises a list copy by it
    and gives each recipient their own one-click link in front of it (engine/oneclick.py, RFC 8058)."""
    return f"<mailto:{lst.address_for('request')}?subject=unsubscribe>"


def list_copy(message: RawMessage, lst: ListConfig, hostname: str, now: float) -> bytes:
    """The list's copy: RFC 2369/2919 headers, subject prefix, loop marker; the body untouched.

    Stored once for all recipients: the per-recipient one-click link and List-Unsubscribe-Post are
    added when each copy is delivered. The poster's DKIM signatures stay only if nothing they cover
    changed."""
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
           .with_field("List-Unsubscribe", unsubscribe_mailto(lst))
           .with_field("List-Owner", f"<mailto:{lst.address_for('owner')}>")
           .with_field("Precedence", "list")
           .with_field("X-Loop", spec.address))
    return keep_valid_signatures(message, out, PER_RECIPIENT).to_bytes()


def _with(recipients, extra: str):
    if callable(recipients):
        return lambda conn: itertools.chain(recipients(conn), (extra,))
    return recipients if extra in recipients else recipients + (extra,)


def fan_out(data: bytes, mail_from: str, recipients: list[Recipient], snapshot: Snapshot,
            now: float | None = None, membership: Membership | None = None,
            dmarc: PosterPolicy | None = None, auth: InboundAuth | None = None) -> InboundRecord | Refused:
    """Decide every recipient's fate; refuse the whole message if any list refuses it.

    `membership` holds the senders' roles from the store (engine/membership.py); without it the
    manifests' roles are used, which is what pure callers such as tests want. `dmarc` is the From
    domain's DMARC policy (engine/dmarc.py), looked up before for lists that mitigate; `auth` what the
    post's authentication gave (engine/authentication.py), for lists that ARC-seal."""
    now = time.time() if now is None else now
    size = len(data)
    message = RawMessage.parse(data)
    cleaned = without_forged(message, our_ids(snapshot))  # delivery would seal what a forgery claims
    if cleaned is not message:
        log.info("authentication: removed an Authentication-Results field claiming to be ours, from=%s",
                 mail_from or "<>")
        message, data = cleaned, cleaned.to_bytes()
    senders = senders_of(message, mail_from)
    if membership is None:
        membership = from_manifests(senders, lists_consulted(recipients, snapshot))
    submission = submission_of(message, mail_from, size, membership)
    posts: list[PostRecord] = []
    actions: list = []
    for rcpt in recipients:
        lst = rcpt.list
        if rcpt.target is Target.post:
            verdict = decide(submission, lst)
            note(log, "post.verdict", list=lst.name, sender=mail_from or "<>", verdict=verdict.decision.value,
                 rule=verdict.rule, reason=verdict.reason)
            if verdict.decision is Decision.reject:
                return Refused(verdict.reply, verdict.rule, verdict.reason, lst.name)
            state = {Decision.accept: "queued", Decision.hold: "held", Decision.discard: "discarded"}[verdict.decision]
            hostname = snapshot.hostname(lst.domain)
            post = stamped(message, auth, hostname) if auth is not None and arc_seals(lst.domain, snapshot) else message
            copy = list_copy(mitigated(post, lst, dmarc, hostname, now), lst, hostname, now)
            hold = None
            if state == "held":
                sender = next(iter(sorted(senders - {mail_from.lower()})), mail_from.lower()) if senders else ""
                hold = Hold(secrets.token_hex(12), mail_from.lower() or sender, message.get("subject") or "",
                            now + lst.spec.moderation.expiry)
                posts.append(PostRecord(lst.name, "queued", "moderation: notice to the moderators",
                                        moderation.hold_notice(lst, hold, verdict.reason, message, hostname, now),
                                        lst.address_for("bounces"), moderators(lst), verp=True))
            posts.append(PostRecord(lst.name, state, f"{verdict.rule}: {verdict.reason}", copy,
                                    lst.address_for("bounces"),
                                    receivers(lst, snapshot, now) if state == "queued" else (), verp=True,
                                    poster=membership.posters.get(lst.name), hold=hold, digest=True))
        elif rcpt.target is Target.owner:
            posts.append(PostRecord(lst.name, "queued", "owner: forwarded to the moderators", data,
                                    lst.address_for("bounces"), moderators(lst), verp=True))
        elif rcpt.target is Target.bounces:
            whom = f" for {rcpt.subscriber}" if rcpt.subscriber else ""
            posts.append(PostRecord(lst.name, "bounce", f"bounce{whom}: kept for bounce processing", data,
                                    "", (rcpt.address,)))  # the address it came to; read by engine/bounces.py
        elif rcpt.target in (Target.request, Target.command, Target.confirm):
            posts.append(PostRecord(lst.name if lst else "", "request", rcpt.target.value, data, "", ()))
            actions.append(commands.action(rcpt, message, mail_from, senders, snapshot, now))
        elif rcpt.target is Target.postmaster:
            domain = snapshot.domains[rcpt.address.rpartition("@")[2]]
            posts.append(PostRecord("", "queued", "postmaster: forwarded", data, mail_from,
                                    (domain.postmaster,)))
    archive = snapshot.delivery.archive_copy
    if archive:  # a copy of all outgoing mail to a local mailbox
        posts = [replace(p, recipients=_with(p.recipients, archive)) if p.state == "queued" else p for p in posts]
    unique = tuple(dict.fromkeys(r.address for r in recipients))
    return InboundRecord(mail_from, unique, data, snapshot.generation, tuple(posts), tuple(actions))
