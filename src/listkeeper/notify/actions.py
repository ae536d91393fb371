"""What a Notification does: POST a signed web hook, append a JSON line, send an email, call a provider.

Each action raises ActionFailed with a message fit for the log (never a secret, never a URL's path or
query); the dispatcher logs it and carries on. Slow parts run off the engine's loop or under a timeout."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from jinja2.sandbox import SandboxedEnvironment

from listkeeper.engine.replies import notice as engine_notice
from listkeeper.manifests.common import SecretRef
from listkeeper.manifests.notifications import EmailAction, LogAction, ProviderAction, WebhookAction

from .bus import SystemEvent, iso

log = logging.getLogger("listkeeper.notify")
PROVIDERS = "listkeeper.providers"
MAX_BACKOFF = 300.0
SIGNATURE_HEADER = "X-Listkeeper-Signature"

Inject = Callable[[bytes, str, list[str]], Awaitable[None]]


class ActionFailed(Exception):
    """The action did not do its work; the message is safe to log."""


@dataclass(frozen=True)
class Notice:
    """One run of a rule's actions: the event, and how many events it stands for."""

    notification: str
    event: SystemEvent
    count: int = 1  # this event and those max_frequency held back since the previous run
    since: float | None = None  # the previous run of this rule (for this key)

    def payload(self) -> dict:
        """The JSON body of a web hook, the line of a log, what a provider gets."""
        return {"notification": self.notification, "event": self.event.as_json(), "count": self.count,
                "previous_run": iso(self.since) if self.since is not None else None}


def shown_url(url: str) -> str:
    """What logs may say about a URL: scheme, host and port. Its path, query and user may hold tokens."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    hidden = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def _scrub(text: str, url: str) -> str:
    return text.replace(url, shown_url(url)) if url else text


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _reveal(ref: SecretRef, what: str) -> str:
    try:
        return ref.reveal()
    except (LookupError, OSError) as exc:  # the messages name the variable or file, never a value
        raise ActionFailed(f"{what} unavailable: {exc}") from None


async def post_webhook(session: aiohttp.ClientSession, action: WebhookAction, notice: Notice) -> int:
    """POST the notice as JSON, signed; retried with backoff on connection errors, timeouts, 5xx and 429.
    Returns the attempts it took."""
    url = _reveal(action.url, "the web hook URL") if isinstance(action.url, SecretRef) else action.url
    where = shown_url(url)
    body = json.dumps(notice.payload(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": "listkeeper",
               "X-Listkeeper-Event": notice.event.type, "X-Listkeeper-Delivery": notice.event.id}
    if action.secret is not None:
        headers[SIGNATURE_HEADER] = signature(_reveal(action.secret, "the web hook secret"), body)
    attempts = action.retries + 1
    problem = ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            log.info("notification %s: web hook %s: %s; attempt %d of %d follows", notice.notification, where,
                     problem, attempt, attempts)
            await asyncio.sleep(min(action.backoff * 2 ** (attempt - 2), MAX_BACKOFF))
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=action.timeout)) as response:
                status = response.status
        except asyncio.TimeoutError:
            problem = f"no answer within {action.timeout:g}s"
            continue
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            problem = _scrub(f"{type(exc).__name__}: {exc}", url)
            continue
        if 200 <= status < 300:
            log.info("notification %s: web hook %s answered %d", notice.notification, where, status)
            return attempt
        problem = f"HTTP {status}"
        if status < 500 and status != 429:  # the receiver refuses this request: sending it again changes nothing
            raise ActionFailed(f"web hook {where}: {problem}")
    raise ActionFailed(f"web hook {where}: {problem} (after {attempts} attempt(s))")


def append_line(path: Path, notice: Notice) -> None:
    line = json.dumps(notice.payload(), separators=(",", ":"), ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


_templates = SandboxedEnvironment(autoescape=False)


@lru_cache(maxsize=128)
def _compiled(source: str):
    return _templates.from_string(source)


def default_body(notice: Notice) -> str:
    event = notice.event
    lines = [f"Notification {notice.notification}: {event.type} at {iso(event.at)}."]
    if notice.count > 1:
        lines.append(f"It stands for {notice.count} events since {iso(notice.since)}; max_frequency held back "
                     f"the others.")
    lines.append("")
    lines.extend(f"  {name}: {', '.join(map(str, value)) if isinstance(value, tuple) else value}"
                 for name, value in event.attributes.items())
    return "\n".join(lines)


def render_email(action: EmailAction, notice: Notice) -> tuple[str, str]:
    """Subject and body from the action's templates (Jinja2's sandbox)."""
    variables = {"event": notice.event.as_json(), "count": notice.count, "notification": notice.notification,
                 "previous_run": notice.payload()["previous_run"]}
    try:
        subject = " ".join(_compiled(action.subject).render(variables).split())
        body = _compiled(action.body).render(variables) if action.body is not None else default_body(notice)
    except Exception as exc:  # noqa: BLE001 - a template error is the operator's to fix
        raise ActionFailed(f"email template: {type(exc).__name__}: {exc}") from None
    return subject or notice.event.type, body


def provider(name: str):
    """The entry point `name` of the group listkeeper.providers, loaded."""
    found = entry_points(group=PROVIDERS, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=PROVIDERS))
        raise ActionFailed(f"no provider {name!r} in the entry point group {PROVIDERS} (installed: "
                           f"{', '.join(known) or 'none'})")
    try:
        return next(iter(found)).load()
    except Exception as exc:  # noqa: BLE001
        raise ActionFailed(f"provider {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from None


async def call_provider(action: ProviderAction, notice: Notice) -> None:
    """Called with (payload, options); a coroutine function is awaited, any other runs in a thread."""
    function = provider(action.name)
    payload, options = notice.payload(), dict(action.options)
    try:
        async with asyncio.timeout(action.timeout):
            if inspect.iscoroutinefunction(function):
                await function(payload, options)
            else:
                result = await asyncio.to_thread(function, payload, options)
                if inspect.isawaitable(result):
                    await result
    except TimeoutError:
        raise ActionFailed(f"provider {action.name!r}: no result within {action.timeout:g}s") from None
    except ActionFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - the provider is someone else's code
        raise ActionFailed(f"provider {action.name!r}: {type(exc).__name__}: {exc}") from None


class Actions:
    """Runs actions for the dispatcher: one HTTP session, one lock per log file."""

    def __init__(self, inject: Inject | None, mail_parts: Callable[[], tuple[str, str]]):
        self._inject = inject
        self._mail_parts = mail_parts  # () -> (hostname, default From)
        self._session: aiohttp.ClientSession | None = None
        self._files: dict[str, asyncio.Lock] = {}

    async def run(self, action, notice: Notice, now: float) -> None:
        if isinstance(action, WebhookAction):
            if self._session is None:
                self._session = aiohttp.ClientSession()
            await post_webhook(self._session, action, notice)
        elif isinstance(action, LogAction):
            lock = self._files.setdefault(action.path, asyncio.Lock())
            async with lock:  # lines of one file in the order of the events
                try:
                    await asyncio.to_thread(append_line, Path(action.path), notice)
                except OSError as exc:
                    raise ActionFailed(f"log {action.path}: {exc.strerror or exc}") from None
        elif isinstance(action, EmailAction):
            await self._email(action, notice, now)
        elif isinstance(action, ProviderAction):
            await call_provider(action, notice)
        else:
            raise ActionFailed(f"unknown action {type(action).__name__}")

    async def _email(self, action: EmailAction, notice: Notice, now: float) -> None:
        if self._inject is None:
            raise ActionFailed("email: no engine to send it")
        hostname, postmaster = self._mail_parts()
        subject, body = render_email(action, notice)
        mail = engine_notice(action.sender or postmaster, ", ".join(action.to), subject, body, hostname, now)
        mail["X-Listkeeper-Notification"] = notice.notification
        # a null envelope sender: a failure of this mail is never bounced, and never notified by mail again
        await self._inject(mail.as_bytes(), "", list(action.to))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
