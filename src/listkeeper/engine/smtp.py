"""The aiosmtpd handler: each hook turns SMTP into a call of a pure decision and back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from .fanout import Refused, fan_out
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

    def _snapshot(self, session: Session) -> Snapshot:
        """A session keeps the configuration it started with, even across a reload."""
        snapshot = getattr(session, "listkeeper_snapshot", None)
        if snapshot is None:
            snapshot = self._current()
            session.listkeeper_snapshot = snapshot
        return snapshot

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
        membership = await asyncio.to_thread(look_up_in, self._store, data, envelope.mail_from or "", recipients,
                                             snapshot, self._clock())
        outcome = fan_out(data, envelope.mail_from or "", recipients, snapshot, self._clock(), membership)
        if isinstance(outcome, Refused):
            log.info("smtp.refused from=%s rule=%s reply=%r", envelope.mail_from, outcome.rule, outcome.reply)
            return outcome.reply
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
