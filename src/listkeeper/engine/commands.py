"""Mail commands, as ezmlm and Mailman users know them.

To LIST-request@DOMAIN, in the subject or the first lines of the body:
    subscribe [ADDRESS] [digest] | unsubscribe [ADDRESS] | digest on|off | help
    event NAME [ADDRESS] | confirm TOKEN | approve TOKEN | reject TOKEN [REASON] | discard TOKEN
To LIST-confirm+TOKEN@DOMAIN: any message (a reply to the confirmation request or moderation notice).
To mailserver@DOMAIN: event NAME [ADDRESS], help.

Parsing is pure; the commands run in the spool's transaction (they read and change subscribers, holds
and confirmations) and return the replies to queue. Subscribing and unsubscribing need a confirmation
from the address concerned, so nobody can subscribe or unsubscribe someone else. Every command gets a
reply, unless the address has had its day's share of automatic replies, or the message is itself
automatic (a bounce, an auto-reply, list traffic): those are never answered and their commands ignored.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import SMTP
from email.utils import getaddresses

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from listkeeper import notify
from listkeeper.logs import note
from listkeeper.manifests.events import BUILT_IN
from listkeeper.store import autoresponses, subscribers
from listkeeper.store.queue import PostRecord
from listkeeper.store.tables import confirmations

from . import events as list_events
from . import moderation
from .headers import RawMessage
from .recipients import Recipient, Target
from .replies import command_reply, may_answer, notice
from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.commands")
MAX_LINES = 5
MAX_UNKNOWN = 2
_ADDRESS = r"<?([^\s<>@]+@[^\s<>]+?)>?"
_PATTERNS = {
    "subscribe": re.compile(rf"^(?:subscribe|sub|join)(?:\s+{_ADDRESS})?(?:\s+(digest))?$", re.I),
    "unsubscribe": re.compile(rf"^(?:unsubscribe|unsub|leave|signoff)(?:\s+{_ADDRESS})?$", re.I),
    "digest": re.compile(r"^(?:set\s+)?digest\s+(on|off)$", re.I),
    "help": re.compile(r"^help$", re.I),
    "event": re.compile(rf"^event\s+([a-z][a-z0-9_-]*)(?:\s+{_ADDRESS})?$", re.I),
    "confirm": re.compile(r"^confirm\s+([a-z0-9]+)$", re.I),
    "approve": re.compile(r"^approve\s+([a-z0-9]+)$", re.I),
    "reject": re.compile(r"^reject\s+([a-z0-9]+)(?:\s+(.*))?$", re.I),
    "discard": re.compile(r"^discard\s+([a-z0-9]+)$", re.I),
}
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|fwd?)\s*:\s*)+", re.I)


@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parsed:
    commands: tuple[Command, ...]
    ignored: tuple[str, ...] = ()
    first_line: str = ""  # the first unquoted body line (a moderator's 'reject REASON' in a reply)


def _match(line: str) -> Command | None:
    line = " ".join(line.strip().split())
    for verb, pattern in _PATTERNS.items():
        m = pattern.match(line)
        if m:
            return Command(verb, tuple(g for g in m.groups() if g))
    return None


def body_lines(data: bytes) -> list[str]:
    """The text of the message's first text/plain part, as lines."""
    try:
        parsed = message_from_bytes(data, policy=SMTP)
        part = parsed.get_body(("plain",)) if parsed.is_multipart() else parsed
        text = part.get_content() if part is not None and part.get_content_type() == "text/plain" else ""
    except Exception:  # a message we cannot decode has no commands
        text = ""
    if not isinstance(text, str):
        text = ""
    return text.splitlines()


def parse(message: RawMessage) -> Parsed:
    """Commands in the subject and the first non-empty body lines; stops at a signature or a quote."""
    found: list[Command] = []
    ignored: list[str] = []
    subject = _REPLY_PREFIX.sub("", message.get("subject") or "").strip()
    command = _match(subject) if subject else None
    if command:
        found.append(command)
    first_line = ""
    seen = 0
    for line in body_lines(message.to_bytes()):
        if line.rstrip() in ("--", "-- ") or line.startswith(">"):
            break
        if not line.strip():
            continue
        first_line = first_line or line.strip()
        seen += 1
        if seen > MAX_LINES:
            break
        command = _match(line)
        if command is None:
            if len(ignored) < MAX_UNKNOWN:
                ignored.append(line.strip()[:100])
            if found or len(ignored) >= MAX_UNKNOWN:
                break
            continue
        if command not in found:
            found.append(command)
    return Parsed(tuple(found), tuple(ignored), first_line)


def primary_sender(message: RawMessage, mail_from: str) -> str:
    """Whom a command speaks for: the From address, or the envelope sender when there is none."""
    for _, address in getaddresses(message.get_all("from")):
        if "@" in address:
            return address.lower()
    return mail_from.lower()


HELP = """{list} understands these commands, sent to {request} in the subject or the first lines of the body:

  subscribe [ADDRESS] [digest]   join the list (a confirmation is sent to the address)
  unsubscribe [ADDRESS]          leave the list (a confirmation is sent to the address)
  digest on | digest off         receive a digest instead of single posts, or back
  event NAME [ADDRESS]           fire one of the list's events
  help                           this text

Moderators also answer held posts with: approve TOKEN, reject TOKEN [REASON], discard TOKEN.
Every message from the list carries a List-Unsubscribe link that works in one click."""


@dataclass
class Context:
    conn: Connection
    snapshot: Snapshot
    lst: ListConfig | None
    domain: str
    sender: str  # the primary sender (From)
    senders: frozenset[str]
    mail_from: str
    now: float
    parsed: Parsed
    out: list[PostRecord] = field(default_factory=list)  # extra mails (confirmation requests)
    confirmations_to: list[str] = field(default_factory=list)  # whom those requests went to

    def roles(self) -> frozenset[str]:
        if self.lst is None:
            return frozenset()
        return subscribers.roles_for(self.conn, [self.lst.name], self.senders).get(self.lst.name, frozenset())

    def auto_mail(self, to: str, subject: str, body: str, reply_to: str | None = None) -> bool:
        """Queue an automatic mail to `to`, within its daily limit; False when the limit held it back."""
        lst = self.lst
        limit = lst.spec.autoresponse_limit if lst else 10
        if not autoresponses.allow(self.conn, to, self.now, limit):
            log.info("autoresponse.limited to=%s", to)
            return False
        data = notice(lst.address_for("request"), to, subject, body, self.snapshot.hostname(self.domain), self.now,
                      reply_to=reply_to, loop_marker=lst.spec.address, auto="auto-replied").as_bytes()
        self.out.append(PostRecord(lst.name, "queued", "command: confirmation request", data,
                                   lst.address_for("bounces"), (to,), verp=True))
        return True


def _confirmation(ctx: Context, action: str, address: str, detail: dict) -> str:
    lst = ctx.lst
    token = secrets.token_hex(12)
    ctx.conn.execute(confirmations.insert().values(
        token=token, list_name=lst.name, address=address, action=action, detail=json.dumps(detail),
        created_at=ctx.now, expires_at=ctx.now + lst.spec.confirmation_expiry))
    confirm = f"{lst.local_part}-confirm+{token}@{lst.domain}"
    days = max(1, int(lst.spec.confirmation_expiry // 86400))
    what = "subscribe to" if action == "subscribe" else "unsubscribe from"
    body = (f"Someone (perhaps you) asked to {what} {lst.spec.address} for the address {address}.\n\n"
            f"To confirm, reply to this message, or send a message to {confirm}. If you did not ask for this, "
            f"do nothing: the request expires in {days} day{'s' if days != 1 else ''}.")
    sent = ctx.auto_mail(address, f"confirm {token}", body, reply_to=confirm)
    if sent:
        ctx.confirmations_to.append(address)
    if not sent:
        return f"No confirmation request could be sent to {address} today (too many automatic messages); try tomorrow."
    if address == ctx.sender:
        return f"A confirmation request was sent to {address}; answer it to {what} {lst.spec.address}."
    return f"A confirmation request was sent to {address}; nothing changes until that address answers it."


def _dynamic(ctx: Context) -> str:
    lst = ctx.lst
    return (f"The members of {lst.spec.address} are chosen by the organisation's member directory each time a "
            f"message is posted, so nobody can subscribe or unsubscribe by mail. To change whether you receive it, "
            f"update your record in the member directory, or write to {lst.address_for('owner')}.")


def do_subscribe(ctx: Context, cmd: Command) -> str:
    lst = ctx.lst
    if lst.spec.members is not None:
        return _dynamic(ctx)
    address = (cmd.args[0] if cmd.args and "@" in cmd.args[0] else ctx.sender).lower()
    digest = "digest" in (a.lower() for a in cmd.args)
    member = subscribers.get(ctx.conn, lst.name, address)
    if member is not None and member.receiving and address == ctx.sender:
        return f"{address} is already subscribed to {lst.spec.address}; nothing changed."
    return _confirmation(ctx, "subscribe", address, {"digest": digest})


def do_unsubscribe(ctx: Context, cmd: Command) -> str:
    lst = ctx.lst
    if lst.spec.members is not None:
        return _dynamic(ctx)
    address = (cmd.args[0] if cmd.args else ctx.sender).lower()
    member = subscribers.get(ctx.conn, lst.name, address)
    if (member is None or not member.receives or member.state == "unsubscribed") and address == ctx.sender:
        return f"{address} is not subscribed to {lst.spec.address}; nothing changed."
    return _confirmation(ctx, "unsubscribe", address, {})


def do_digest(ctx: Context, cmd: Command) -> str:
    lst = ctx.lst
    if lst.spec.members is not None:
        return _dynamic(ctx)
    on = cmd.args[0].lower() == "on"
    member = subscribers.get(ctx.conn, lst.name, ctx.sender)
    if member is None or not member.receiving:
        return f"{ctx.sender} is not subscribed to {lst.spec.address}; nothing changed."
    if subscribers.set_digest(ctx.conn, lst.name, ctx.sender, on, ctx.now, "mail"):
        notify.on_commit(ctx.conn, "subscription.changed", list=lst.name, address=ctx.sender,
                         action="digest_on" if on else "digest_off", source="mail")
        return (f"{ctx.sender} now receives {lst.spec.address} as a digest." if on else
                f"{ctx.sender} now receives each post to {lst.spec.address} as it is sent.")
    return f"Digest mode for {ctx.sender} on {lst.spec.address} is already {'on' if on else 'off'}; nothing changed."


def _confirm_subscription(ctx: Context, token: str) -> str | None:
    row = ctx.conn.execute(select(confirmations).where(confirmations.c.token == token)).first()
    if row is None:
        return None
    lst = ctx.lst
    if row.list_name != lst.name or row.used_at is not None or row.expires_at < ctx.now:
        return f"The confirmation {token} is unknown, expired or already used; nothing changed."
    ctx.conn.execute(update(confirmations).where(confirmations.c.token == token).values(used_at=ctx.now))
    detail = json.loads(row.detail or "{}")
    if row.action == "subscribe":
        result = subscribers.subscribe(ctx.conn, lst.name, row.address, ctx.now, "mail",
                                       digest=bool(detail.get("digest")))
        if result == "already":
            return f"{row.address} is already subscribed to {lst.spec.address}; nothing changed."
        notify.on_commit(ctx.conn, "subscription.changed", list=lst.name, address=row.address,
                         action="join" if result == "joined" else result, source="mail")
        mode = "a digest of " if detail.get("digest") else ""
        return (f"Welcome: {row.address} now receives {mode}{lst.spec.address}. To leave, send 'unsubscribe' to "
                f"{lst.address_for('request')}, or use the List-Unsubscribe link in any post.")
    if subscribers.unsubscribe(ctx.conn, lst.name, row.address, ctx.now, "mail"):
        notify.on_commit(ctx.conn, "subscription.changed", list=lst.name, address=row.address, action="leave",
                         source="mail")
        return f"{row.address} was unsubscribed from {lst.spec.address}. Goodbye."
    return f"{row.address} was not subscribed to {lst.spec.address}; nothing changed."


def _moderate(ctx: Context, token: str, decision: str, reason: str = "") -> str | None:
    hold = moderation.find(ctx.conn, token)
    if hold is None or hold["list_name"] != ctx.lst.name:
        return None
    if "moderator" not in ctx.roles():
        return f"Only a moderator of {ctx.lst.spec.address} may decide on held posts; nothing happened."
    outcome = moderation.decide(ctx.conn, ctx.snapshot, token, decision, ctx.sender, ctx.now, reason)
    ctx.out.extend(outcome.posts)
    return outcome.text


def do_confirm(ctx: Context, cmd: Command) -> str:
    token = cmd.args[0].lower()
    text = _confirm_subscription(ctx, token)
    if text is None:
        first = ctx.parsed.first_line.split(None, 1)
        verb = first[0].lower() if first else ""
        decision = verb if verb in ("reject", "discard") else "approve"
        text = _moderate(ctx, token, decision, first[1] if verb == "reject" and len(first) > 1 else "")
    return text or f"The confirmation {token} is unknown, expired or already used; nothing changed."


def do_decision(ctx: Context, cmd: Command) -> str:
    token = cmd.args[0].lower()
    text = _moderate(ctx, token, cmd.verb, cmd.args[1] if len(cmd.args) > 1 else "")
    return text or f"No post of {ctx.lst.spec.address} is held with token {token}; nothing happened."


def do_event(ctx: Context, cmd: Command) -> str:
    name = cmd.args[0].lower()
    address = cmd.args[1].lower() if len(cmd.args) > 1 else None
    lst = ctx.lst
    if lst is None:  # mailserver@: the one list of this domain with that event
        owners = [item for item in ctx.snapshot.lists.values()
                  if item.domain == ctx.domain and any(e.name == name for e in item.spec.events)]
        if len(owners) != 1:
            return (f"No single list of {ctx.domain} has an event named {name!r}; "
                    f"send the command to LIST-request@{ctx.domain} instead. Nothing happened.")
        lst = ctx.lst = owners[0]
    spec = lst.spec
    if name not in {e.name for e in spec.events} | set(BUILT_IN):
        return f"{spec.address} has no event named {name!r}; nothing happened."
    roles = ctx.roles()
    if address and address not in ctx.senders and "moderator" not in roles:
        return f"Only a moderator of {spec.address} may fire an event for someone else; nothing happened."
    target = address or next((s for s in sorted(ctx.senders)
                              if (m := subscribers.get(ctx.conn, lst.name, s)) is not None and m.receiving),
                             ctx.sender)
    member = subscribers.get(ctx.conn, lst.name, target)
    if member is None or not member.receiving:
        return f"{target} is not subscribed to {spec.address}; nothing happened."
    event = next((e for e in spec.events if e.name == name), None)
    fired = list_events.fire(ctx.conn, lst, event, name, [target], ctx.snapshot, ctx.now)
    note(log, "event.fired", list=lst.name, event=fired.event, subscribers=1, source="mail", address=target)
    notify.on_commit(ctx.conn, "event.fired", list=lst.name, event=fired.event, subscribers=1, source="mail",
                     address=target)
    return f"Event {name} fired for {target} on {spec.address}."


def do_help(ctx: Context, cmd: Command) -> str:
    if ctx.lst is None:
        return (f"mailserver@{ctx.domain} understands: event NAME [ADDRESS] (fires an event of the one list of "
                f"{ctx.domain} that has it) and help. For subscriptions, write to LIST-request@{ctx.domain}.")
    return HELP.format(list=ctx.lst.spec.address, request=ctx.lst.address_for("request"))


HANDLERS: dict[str, Callable[[Context, Command], str]] = {
    "subscribe": do_subscribe, "unsubscribe": do_unsubscribe, "digest": do_digest, "help": do_help,
    "event": do_event, "confirm": do_confirm, "approve": do_decision, "reject": do_decision,
    "discard": do_decision,
}
LIST_ONLY = {"subscribe", "unsubscribe", "digest", "confirm", "approve", "reject", "discard"}


def action(rcpt: Recipient, message: RawMessage, mail_from: str, senders: frozenset[str], snapshot: Snapshot,
           now: float):
    """The work a message to a command address asks for, run later in the spool's transaction."""
    parsed = parse(message)
    if rcpt.target is Target.confirm:
        parsed = Parsed((Command("confirm", (rcpt.token,)),), (), parsed.first_line)
    answerable = may_answer(message, mail_from)
    domain = rcpt.address.rpartition("@")[2]
    sender = primary_sender(message, mail_from)

    def run(conn: Connection, at: float) -> list[PostRecord]:
        if not answerable:
            log.info("commands.ignored rcpt=%s from=%s reason=automatic message", rcpt.address, mail_from or "<>")
            return []
        ctx = Context(conn, snapshot, rcpt.list, domain, sender, senders, mail_from, at, parsed)
        results = []
        for cmd in parsed.commands:
            if ctx.lst is None and cmd.verb in LIST_ONLY:
                results.append(f"> {cmd.verb}\nSend this command to LIST-request@{domain}; nothing happened.")
                continue
            text = HANDLERS[cmd.verb](ctx, cmd)
            log.info("command rcpt=%s from=%s verb=%s", rcpt.address, sender, cmd.verb)
            shown = cmd.args if cmd.verb == "event" else cmd.args[:1]  # not a reject's free-text reason
            results.append(f"> {' '.join((cmd.verb,) + shown)}\n{text}")
        if not parsed.commands:
            results.append(do_help(ctx, Command("help")))
        for line in parsed.ignored:
            results.append(f"> {line}\nNot a command; ignored.")
        lst = ctx.lst
        only_requests = all(c.verb in ("subscribe", "unsubscribe") for c in parsed.commands)
        if (parsed.commands and only_requests and not parsed.ignored
                and len(ctx.confirmations_to) == len(parsed.commands)
                and set(ctx.confirmations_to) == {mail_from.lower()}):
            return ctx.out  # the confirmation request is the answer: one mail, not two
        from_address = lst.address_for("request") if lst else f"mailserver@{domain}"
        if not autoresponses.allow(conn, mail_from, at, lst.spec.autoresponse_limit if lst else 10):
            log.info("autoresponse.limited to=%s", mail_from)
            return ctx.out
        body = "\n\n".join(results)
        reply = command_reply(from_address, lst.spec.address if lst else from_address, message, mail_from,
                              snapshot.hostname(domain), at, body)
        bounce = lst.address_for("bounces") if lst else ""
        return [*ctx.out, PostRecord(lst.name if lst else "", "queued", "command: answered", reply, bounce,
                                     (mail_from,), verp=lst is not None)]

    return run
