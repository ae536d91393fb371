"""The HTTP listener of `listkeeper serve`: one-click unsubscribe (RFC 8058), `/metrics` and `/healthz`.

GET /unsubscribe/TOKEN shows a small page with a button; POST to the same URL with the body
`List-Unsubscribe=One-Click` (what mailbox providers send, and what the button sends) unsubscribes at
once. A forged or altered token gets 403 and changes nothing; a second POST only says it is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape

from aiohttp import web

from listkeeper.store import Store

from .oneclick import PATH, find_list, leave, standing, verify

log = logging.getLogger("listkeeper.web")

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the URL holds the token
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}
STYLE = ("body{font-family:system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em;color:#222}"
         "button{font-size:1.1em;padding:.5em 1.4em;cursor:pointer}")


class WebListenError(OSError):
    """The HTTP listener could not bind; the message names the address."""


def page(title: str, text: str, status: int = 200, form: bool = False) -> web.Response:
    button = ('<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
              '<button type="submit">Unsubscribe</button></form>') if form else ""
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1><p>{text}</p>{button}</body></html>")
    return web.Response(text=body, status=status, content_type="text/html", headers=HEADERS)


REFUSED = ("Not a valid link", "This unsubscribe link is not valid. Use the link from a recent message "
           "of the list, or mail the list's -request address with the word unsubscribe.")


class Handlers:
    def __init__(self, store: Store, current, key: bytes):
        self._store = store
        self._current = current  # () -> Snapshot
        self._key = key

    def _target(self, request: web.Request):
        found = verify(self._key, request.match_info["token"])
        if found is None:
            return None, page(*REFUSED, status=403)
        lst = find_list(self._current(), found.list_name)
        if lst is None:
            return None, page("No such list", f"The list {escape(found.list_name)} is no longer served here.",
                              status=404)
        return (lst, found.address), None

    def _standing(self, lst, address) -> str:
        with self._store.engine.connect() as conn:
            return standing(conn, lst, address)

    def _leave(self, lst, address) -> str:
        with self._store.writing() as conn:
            return leave(conn, lst, address, self._store.now())

    async def confirm(self, request: web.Request) -> web.Response:
        target, refused = self._target(request)
        if refused is not None:
            return refused
        lst, address = target
        where = f"<b>{escape(address)}</b> from <b>{escape(lst.spec.address)}</b>"
        now = await asyncio.to_thread(self._standing, lst, address)
        if now == "unsubscribed":
            return page("Unsubscribed", f"{where}: already unsubscribed. Nothing more is needed.")
        if now == "not a member":
            return page("Not subscribed", f"{escape(address)} is not subscribed to {escape(lst.spec.address)}.")
        return page("Unsubscribe?", f"Unsubscribe {where}? You will get no more posts from this list.", form=True)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        target, refused = self._target(request)
        if refused is not None:
            return refused
        lst, address = target
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":
            return page("Bad request", "Expected the form field List-Unsubscribe=One-Click (RFC 8058).", status=400)
        result = await asyncio.to_thread(self._leave, lst, address)
        log.info("unsubscribe.web list=%s address=%s result=%s", lst.name, address, result)
        where = f"{escape(address)} from {escape(lst.spec.address)}"
        if result == "not a member":
            return page("Not subscribed", f"{escape(address)} is not subscribed to {escape(lst.spec.address)}.")
        if result == "already unsubscribed":
            return page("Unsubscribed", f"{where}: already unsubscribed. Nothing more is needed.")
        return page("Unsubscribed", f"{where}: unsubscribed. You will get no more posts from this list.")


@dataclass(frozen=True)
class Operations:
    """What the operator's endpoints read: the metrics' text format, and what makes the engine unhealthy."""

    metrics: Callable[[], Awaitable[bytes]]
    content_type: str
    problems: Callable[[], Awaitable[list[str]]]

    async def get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.metrics(), headers={"Content-Type": self.content_type})

    async def get_health(self, request: web.Request) -> web.Response:
        found = await self.problems()
        if found:
            return web.Response(text="\n".join(found) + "\n", status=503, headers={"Cache-Control": "no-store"})
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


def application(store: Store, current, key: bytes, operations: Operations | None = None) -> web.Application:
    handlers = Handlers(store, current, key)
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get(PATH + "{token}", handlers.confirm, allow_head=False)
    app.router.add_post(PATH + "{token}", handlers.unsubscribe)
    if operations is not None:
        app.router.add_get("/metrics", operations.get_metrics)
        app.router.add_get("/healthz", operations.get_health)
    return app


@dataclass
class WebListener:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_web(store: Store, current, key: bytes, host: str, port: int,
                    operations: Operations | None = None) -> WebListener:
    runner = web.AppRunner(application(store, current, key, operations), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise WebListenError(exc.errno, f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
    return WebListener(runner, host, runner.addresses[0][1])  # the real port when 0 asked for any
