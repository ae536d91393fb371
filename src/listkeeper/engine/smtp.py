"""The aiosmtpd handler: each hook turns SMTP into a call of a pure decision and back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from listkeeper import notify
from listkeeper.store import refusals

from .authentication import Authenticator
from .barring import barred_sender, barred_size
from .dmarc import PolicyLookup
from .fanout import Refused, fan_out, senders_of
from .headers import RawMessage
from .membership import look_up_in
from .recipients import Refusal, accept_recipient
from .snapshot import Snapshot
from .spool import Spool

log = logging.getLogger("listkeeper.smtp")


class ListHandler:
    def __init__(self, current: Callable[[], Snapshot], spool: Spool, clock: Callable[[], float], store):
        self._store = store
        self._current = current
        self._spool = spool
        self._clock = clock
        self._dmarc = PolicyLookup()
        self._authentication = Authenticator(self._dmarc)  # the same resolver and cache

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
        log.info("smtp.refused from=%s peer=%s rule=%s reason=%s reply=%r", mail_from or "<>", peer, rule, reason, reply)
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
            log.info("smtp.rcpt_refused rcpt=%s reply=%r", address, result.reply)
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
        auth = await self._authentication.for_posts(data, recipients, snapshot)  # DNS, without blocking the loop
        poster = await self._dmarc.poster_policy(data, recipients, snapshot)
        outcome = fan_out(data, envelope.mail_from or "", recipients, snapshot, self._clock(), membership,
                          dmarc=poster, auth=auth)
        if isinstance(outcome, Refused):
            return await self._refuse(session, envelope.mail_from or "", envelope.rcpt_tos, outcome.rule,
                                      outcome.reason, outcome.reply)
        try:
            message_id = await self._spool.submit(outcome)
        except Exception:
            return "451 4.3.0 Temporary failure storing the message; please try again"
        log.info("smtp.accepted message=%d from=%s rcpts=%s", message_id, envelope.mail_from,
                 ",".join(envelope.rcpt_tos))
        held = [p.list_name for p in outcome.posts if p.state == "held"]
        if held:
            return f"250 2.0.0 Queued as {message_id}; held for moderation by {', '.join(held)}"
        return f"250 2.0.0 Queued as {message_id}"
