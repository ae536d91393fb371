"""The aiosmtpd handler: each hook turns SMTP into a call of a pure decision and back."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session

from listkeeper import notify
from listkeeper.logs import note, session_id
from listkeeper.store import refusals

from .authentication import Authenticator
from .barring import barred_sender, barred_size
from .dmarc import PolicyLookup
from .fanout import Refused, fan_out, senders_of
from .headers import RawMessage
from .membership import look_up_in
from .recipients import Refusal, accept_recipient
from .snapshot import Snapshot
from .spfcheck import Arrival
from .spool import Spool

log = logging.getLogger("listkeeper.smtp")


@dataclass
class SessionNotes:
    """What the `smtp.session` record says when the connection ends."""

    id: str
    peer: str
    started: float
    probe: bool = False  # /healthz's own connection: neither counted nor logged
    replies: Counter = field(default_factory=Counter)
    queue_ids: list[int] = field(default_factory=list)


class ListSMTP(SMTP):
    """aiosmtpd's server with our bookkeeping: an id per session for the logs (a context variable the
    session's task inherits), replies counted by code, and one `smtp.session` record at the end."""

    notes: SessionNotes | None = None

    def connection_made(self, transport) -> None:
        if self.notes is not None:  # again after STARTTLS: the same session goes on
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        metrics = self.event_handler.metrics
        probe = bool(metrics is not None and peer and tuple(peer[:2]) in metrics.probes)
        self.notes = SessionNotes(secrets.token_hex(6), str(peer[0]) if peer else "", time.monotonic(), probe)
        if metrics is not None and not probe:
            metrics.smtp_sessions.inc()
            metrics.smtp_active.inc()
        token = session_id.set(None if probe else self.notes.id)
        try:  # the session's task is created in here, with a copy of this context
            super().connection_made(transport)
        finally:
            session_id.reset(token)

    async def push(self, status) -> None:
        notes = self.notes
        if notes is not None and not notes.probe:
            line = status.decode("ascii", "replace") if isinstance(status, bytes) else status
            if line[:3].isdigit() and line[3:4] != "-":  # the last line of a reply
                notes.replies[line[:3]] += 1
                if self.event_handler.metrics is not None:
                    self.event_handler.metrics.smtp_reply(line[:3])
        await super().push(status)

    def connection_lost(self, error) -> None:
        session = self.session
        helo = session.host_name if session is not None else None
        tls = session is not None and session.ssl is not None
        login = getattr(getattr(session, "auth_data", None), "username", None)
        super().connection_lost(error)
        notes = self.notes
        if notes is None or notes.probe:
            return
        if self.event_handler.metrics is not None:
            self.event_handler.metrics.smtp_active.dec()
        note(log, "smtp.session", session=notes.id, peer=notes.peer, helo=helo, tls=tls, username=login,
             seconds=round(time.monotonic() - notes.started, 3), replies=dict(notes.replies),
             queue_ids=notes.queue_ids, error=f"{type(error).__name__}: {error}" if error else None)


class ListHandler:
    def __init__(self, current: Callable[[], Snapshot], spool: Spool, clock: Callable[[], float], store,
                 metrics=None):
        self._store = store
        self._current = current
        self._spool = spool
        self._clock = clock
        self.metrics = metrics  # engine/metrics.py's Metrics, or None
        self._dmarc = PolicyLookup(observe=metrics.dns if metrics is not None else None)
        self._authentication = Authenticator(self._dmarc)  # the same resolver and cache

    def close(self) -> None:
        self._authentication.close()

    def _snapshot(self, session: Session) -> Snapshot:
        """A session keeps the configuration it started with, even across a reload."""
        snapshot = getattr(session, "listkeeper_snapshot", None)
        if snapshot is None:
            snapshot = self._current()
            session.listkeeper_snapshot = snapshot
        return snapshot

    async def _refuse(self, session: Session, mail_from: str, recipients, rule: str, reason: str, reply: str) -> str:
        """Every refusal of inbound mail is logged and recorded with its rule (the barring report)."""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        note(log, "smtp.refused", sender=mail_from or "<>", peer=peer, rule=rule, reason=reason, reply=reply)
        recipients = tuple(recipients)
        notify.emit("message.barred", sender=mail_from or "", address=recipients[0] if recipients else "",
                    recipients=recipients, remote_ip=peer, rule=rule, reason=reason)
        try:
            await asyncio.to_thread(self._record_refusal, peer, mail_from, list(recipients), rule, reason, reply)
        except Exception:  # recording is best effort; the refusal itself stands
            log.exception("could not record the refusal")
        return reply

    def _record_refusal(self, peer, mail_from, recipients, rule, reason, reply) -> None:
        with self._store.engine.begin() as conn:
            refusals.record(conn, self._clock(), peer, mail_from, recipients, rule, reason, reply)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        snapshot = self._snapshot(session)
        barred = barred_sender([address], snapshot.barring)
        if barred is None:
            declared = next((o.partition("=")[2] for o in mail_options if o.upper().startswith("SIZE=")), "")
            barred = barred_size(int(declared), snapshot.barring) if declared.isdigit() else None
        if barred is not None:
            return await self._refuse(session, address, (), barred.rule, barred.reason, barred.reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        result = accept_recipient(address, self._snapshot(session))
        if isinstance(result, Refusal):
            note(log, "smtp.rcpt_refused", recipient=address, reply=result.reply)
            return result.reply
        if not hasattr(envelope, "listkeeper_recipients"):
            envelope.listkeeper_recipients = []
        envelope.listkeeper_recipients.append(result)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        snapshot = self._snapshot(session)
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        recipients = envelope.listkeeper_recipients
        barred = barred_size(len(data), snapshot.barring) or barred_sender(
            senders_of(RawMessage.parse(data), ""), snapshot.barring)
        if barred is not None:
            return await self._refuse(session, envelope.mail_from or "", envelope.rcpt_tos, barred.rule,
                                      barred.reason, barred.reply)
        membership = await asyncio.to_thread(look_up_in, self._store, data, envelope.mail_from or "", recipients,
                                             snapshot, self._clock())
        peer = session.peer[0] if isinstance(session.peer, tuple) else ""
        arrival = Arrival(str(peer), envelope.mail_from or "", session.host_name or "")
        auth = await self._authentication.for_posts(data, recipients, snapshot, arrival)  # DNS, off the loop
        poster = await self._dmarc.poster_policy(data, recipients, snapshot)
        outcome = fan_out(data, envelope.mail_from or "", recipients, snapshot, self._clock(), membership,
                          dmarc=poster, auth=auth)
        if self.metrics is not None:
            self.metrics.verdicts(outcome)
        if isinstance(outcome, Refused):
            return await self._refuse(session, envelope.mail_from or "", envelope.rcpt_tos, outcome.rule,
                                      outcome.reason, outcome.reply)
        try:
            message_id = await self._spool.submit(outcome)
        except Exception:
            return "451 4.3.0 Temporary failure storing the message; please try again"
        held = [p.list_name for p in outcome.posts if p.state == "held"]
        note(log, "smtp.accepted", queue_id=message_id, sender=envelope.mail_from or "<>",
             recipients=envelope.rcpt_tos, size=len(data), held=held or None)
        if isinstance(server, ListSMTP) and server.notes is not None:
            server.notes.queue_ids.append(message_id)
        if held:
            return f"250 2.0.0 Queued as {message_id}; held for moderation by {', '.join(held)}"
        return f"250 2.0.0 Queued as {message_id}"
