"""Transports deliver one message to one recipient and report what happened. No scheduling here."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from listkeeper.manifests.routes import PickupRoute, RelaySpec, TlsMode

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


async def deliver_discard(job: Job) -> Result:
    return Result(Event.delivered, "discarded by route")


def _classify(code: int, text: str) -> Result:
    return Result(Event.permanent if 500 <= code < 600 else Event.temporary, f"{code} {text}".strip())


async def deliver_smtp(host: str, port: int, tls: TlsMode, job: Job, *, timeout: float,
                       username: str | None = None, password: str | None = None,
                       tls_context: ssl.SSLContext | None = None) -> Result:
    """One SMTP transaction with aiosmtplib; replies are classified, errors never raised."""
    client = aiosmtplib.SMTP(
        hostname=host, port=port, timeout=timeout, use_tls=tls is TlsMode.implicit,
        start_tls=True if tls is TlsMode.starttls else False, tls_context=tls_context,
    )
    where = f"{host}:{port}"
    try:
        await client.connect()
        if username is not None:
            await client.login(username, password or "")
        errors, response = await client.sendmail(job.return_path, [job.recipient], job.data)
        if errors:
            code, text = next(iter(errors.values()))
            return _classify(code, f"{where}: {text}")
        return Result(Event.delivered, f"{where}: {response}")
    except aiosmtplib.SMTPAuthenticationError as exc:
        return Result(Event.temporary, f"{where}: login failed: {exc.code} {exc.message}")
    except aiosmtplib.SMTPRecipientsRefused as exc:
        code, text = exc.recipients[0].code, exc.recipients[0].message
        return _classify(code, f"{where}: {text}")
    except aiosmtplib.SMTPResponseException as exc:
        return _classify(exc.code, f"{where}: {exc.message}")
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
        return Result(Event.temporary, f"{where}: {type(exc).__name__}: {exc}")
    finally:
        try:
            client.close()
        except Exception:
            pass


async def deliver_relay(relay: RelaySpec, job: Job, tls_context: ssl.SSLContext | None = None) -> Result:
    username = password = None
    if relay.auth is not None:
        try:
            username, password = relay.auth.username, relay.auth.password.reveal()
        except (LookupError, OSError) as exc:
            return Result(Event.temporary, f"relay credentials unavailable: {exc}")
    return await deliver_smtp(relay.host, relay.effective_port, relay.tls, job, timeout=relay.timeout,
                              username=username, password=password, tls_context=tls_context)
