"""A recording SMTP server on loopback for delivery tests: counts connections, answers by rule."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    peer: tuple
    at: float


@dataclass
class Sink:
    """Replies 451 to recipients starting with 'temp', 550 to those starting with 'perm'."""

    received: list[Received] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    peak: int = 0
    connected_at: list[float] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("temp"):
            return "451 4.3.0 Try again later"
        if local.startswith("perm"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.peer, time.monotonic()))
        return "250 2.0.0 OK"

    def rcpts(self) -> list[str]:
        return sorted(r for item in self.received for r in item.rcpts)


class _CountingSMTP(SMTP):
    def connection_made(self, transport):
        sink: Sink = self.event_handler
        sink.connections += 1
        sink.active += 1
        sink.peak = max(sink.peak, sink.active)
        sink.connected_at.append(time.monotonic())
        super().connection_made(transport)

    def connection_lost(self, exc):
        self.event_handler.active -= 1
        super().connection_lost(exc)


class SinkController(Controller):
    def factory(self):
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


def start_sink(host: str = "127.0.0.1", port: int | None = None) -> tuple[Sink, SinkController]:
    sink = Sink()
    controller = SinkController(sink, hostname=host, port=port or free_port(), server_hostname="sink.test")
    controller.start()
    deadline = time.monotonic() + 5
    while sink.active and time.monotonic() < deadline:  # the controller's own start-up probe
        time.sleep(0.01)
    sink.connections, sink.peak, sink.connected_at = 0, 0, []
    return sink, controller
