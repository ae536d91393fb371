"""Transports deliver one message to one recipient and report what happened. No scheduling here."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from listkeeper import notify
from listkeeper.manifests.routes import PickupRoute, RelaySpec, TlsMode

from .downgrade import needs
from .lifecycle import Event


@dataclass(frozen=True)
class Result:
    event: Event  # delivered | temporary | permanent
    detail: str


@dataclass(frozen=True)
class Job:
    delivery_id: int
    recipient: str
    return_path: str
    data: bytes


_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def pickup_name(job: Job) -> str:
    """The same delivery always gets the same file name, so a retried write replaces, never adds."""
    return f"{job.delivery_id:010d}-{_UNSAFE.sub('_', job.recipient)[:120]}.eml"


def _write_pickup_batch(folder: Path, jobs: list[Job]) -> list[Result]:
    """Write every file, make them durable together, then give each its final name.

    One journal commit covers the whole batch instead of one fsync per file, so deliveries
    into the folder do not starve the store's own commits. A crash before the renames leaves
    only temporary files; the deliveries are not yet recorded, so they are written again."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Job, Path, Path]] = []
    results: dict[int, Result] = {}
    for job in jobs:
        final = folder / pickup_name(job)
        tmp = folder / f".{final.name}.tmp"
        head = f"Return-Path: <{job.return_path}>\r\nDelivered-To: {job.recipient}\r\n".encode()
        try:
            with open(tmp, "wb") as fh:
                fh.write(head + job.data)
            written.append((job, tmp, final))
        except OSError as exc:
            results[job.delivery_id] = Result(Event.temporary, f"pickup folder {folder}: {exc.strerror or exc}")
    for job, tmp, final in written:
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the first one commits the journal for all; the rest find nothing dirty
            finally:
                os.close(fd)
            os.replace(tmp, final)
            results[job.delivery_id] = Result(Event.delivered, f"written to {final}")
        except OSError as exc:
            results[job.delivery_id] = Result(Event.temporary, f"pickup folder {folder}: {exc.strerror or exc}")
    if written:
        try:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            return [Result(Event.temporary, f"pickup folder {folder}: {exc.strerror or exc}") for _ in jobs]
    return [results[job.delivery_id] for job in jobs]


async def deliver_pickup(route: PickupRoute, jobs: list[Job]) -> list[Result]:
    """Pickup delivers a batch: one file per job, named by the delivery so a retry replaces it."""
    return await asyncio.to_thread(_write_pickup_batch, Path(route.folder), jobs)


def _classify(code: int, text: str, where: str) -> Result:
    return Result(Event.permanent if 500 <= code < 600 else Event.temporary, f"{where}: {code} {text}".strip())


class SmtpConnection:
    """One open SMTP connection that may carry several messages; every outcome is a Result."""

    def __init__(self, client: aiosmtplib.SMTP, where: str):
        self._client = client
        self.where = where
        self.broken = False

    @classmethod
    async def open(cls, host: str, port: int, tls: TlsMode, *, timeout: float, helo_name: str,
                   username: str | None = None, password: str | None = None,
                   tls_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                   verify: bool = True) -> "SmtpConnection | Result":
        client = aiosmtplib.SMTP(
            hostname=host, port=port, timeout=timeout, use_tls=tls is TlsMode.implicit,
            start_tls=True if tls is TlsMode.starttls else (None if tls is TlsMode.opportunistic else False),
            tls_context=tls_context, local_hostname=helo_name, validate_certs=verify,
        )
        where = f"{server_hostname or host}:{port}"
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            if username is not None:
                await client.login(username, password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            _close(client)
            result, stage = Result(Event.temporary, f"{where}: login failed: {exc.code} {exc.message}"), "auth"
        except aiosmtplib.SMTPResponseException as exc:
            _close(client)
            result = Result(Event.temporary if exc.code < 500 else Event.permanent, f"{where}: {exc.code} {exc.message}")
            stage = "greeting"
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            _close(client)
            result = Result(Event.temporary, f"{where}: cannot connect: {type(exc).__name__}: {exc}")
            stage = "tls" if isinstance(exc, ssl.SSLError) or "TLS" in str(exc) else "connect"
        else:
            return cls(client, where)
        notify.emit("smtp.connection_failed", server=server_hostname or host, port=port, tls=tls.value,
                    auth=username is not None, error=result.detail, stage=stage)
        return result

    @property
    def eight_bit(self) -> bool:
        """The server announced 8BITMIME (RFC 6152): 8-bit bodies go as they are."""
        return self._client.supports_extension("8bitmime")

    @property
    def smtputf8(self) -> bool:
        return self._client.supports_extension("smtputf8")

    async def send(self, job: Job) -> Result:
        need = needs(job.data, job.return_path, job.recipient)
        if need.smtputf8 and not self.smtputf8:
            return Result(Event.permanent, f"{self.where} does not offer SMTPUTF8, which this message needs "
                                           "(UTF-8 in an address or a header field); not sent (5.6.7)")
        if need.eight_bit and not self.eight_bit:  # the scheduler converts such copies; this one could not be
            return Result(Event.permanent, f"{self.where} does not offer 8BITMIME and the 8-bit body could "
                                           "not be converted; not sent (5.6.3)")
        options = (b" BODY=8BITMIME" if (need.eight_bit or need.smtputf8) and self.eight_bit else b"") + \
            (b" SMTPUTF8" if need.smtputf8 else b"")
        try:
            return await self._send(job, options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _classify(exc.recipients[0].code, exc.recipients[0].message, self.where)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, asyncio.TimeoutError) as exc:
            self.broken = True
            return Result(Event.temporary, f"{self.where}: {type(exc).__name__}: {exc}")
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                self.broken = True
            return _classify(exc.code, exc.message, self.where)
        except aiosmtplib.SMTPException as exc:
            self.broken = True
            return Result(Event.temporary, f"{self.where}: {type(exc).__name__}: {exc}")

    async def _send(self, job: Job, options: bytes) -> Result:
        """MAIL, RCPT, DATA with addresses we validated already: aiosmtplib's sendmail would parse
        both addresses again with the email package, its largest cost per message."""
        client = self._client
        reply = await client.execute_command(b"MAIL", b"FROM:<" + job.return_path.encode() + b">" + options)
        if reply.code != 250:
            await self._reset()
            return _classify(reply.code, reply.message, self.where)
        reply = await client.execute_command(b"RCPT", b"TO:<" + job.recipient.encode() + b">")
        if reply.code not in (250, 251):
            await self._reset()
            return _classify(reply.code, reply.message, self.where)
        reply = await client.data(job.data)
        return Result(Event.delivered, f"{self.where}: {reply.code} {reply.message}")

    async def _reset(self) -> None:
        try:
            await self._client.rset()
        except aiosmtplib.SMTPException:
            self.broken = True

    async def close(self) -> None:
        try:
            if not self.broken and self._client.is_connected:
                async with asyncio.timeout(5):
                    await self._client.quit()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        _close(self._client)


def _close(client: aiosmtplib.SMTP) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass


def relay_tls_context(relay: RelaySpec) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=relay.tls_ca_file) if relay.tls_ca_file else None


async def connect_relay(relay: RelaySpec, helo_name: str) -> SmtpConnection | Result:
    username = password = None
    if relay.auth is not None:
        try:
            username, password = relay.auth.username, relay.auth.password.reveal()
        except (LookupError, OSError) as exc:
            return Result(Event.temporary, f"relay credentials unavailable: {exc}")
    try:
        context = relay_tls_context(relay)
    except (OSError, ssl.SSLError) as exc:
        return Result(Event.temporary, f"relay CA file {relay.tls_ca_file}: {exc}")
    return await SmtpConnection.open(relay.host, relay.effective_port, relay.tls, timeout=relay.timeout,
                                     helo_name=helo_name, username=username, password=password,
                                     tls_context=context)
