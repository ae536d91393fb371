"""A throwaway certificate authority (trustme) and aiosmtpd relays speaking TLS on loopback."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

USERNAME = "u"
PASSWORD = "tls-relay-s3cret"


@dataclass(frozen=True)
class Pki:
    ca_file: str  # the CA that signed the relay's certificate
    other_ca_file: str  # a CA the relay's certificate has nothing to do with
    server_context: ssl.SSLContext  # certificate for 127.0.0.1 and localhost


def make_pki(folder: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no client certificates asked for
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    return Pki(str(folder / "ca.pem"), str(folder / "other-ca.pem"), context)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    peer: tuple  # the client's address and port: the same for messages sent over one connection
    tls_version: str | None  # from the server's side of the transport; None when in the clear
    after_starttls: bool  # aiosmtpd fills session.ssl only once STARTTLS has succeeded


@dataclass
class TlsRelay:
    """The handler and authenticator of one aiosmtpd server: records logins and envelopes."""

    port: int
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        ssl_object = server.transport.get_extra_info("ssl_object")
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.peer, ssl_object.version() if ssl_object else None,
                                      session.ssl is not None))
        return "250 2.0.0 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        ok = (auth_data.login, auth_data.password) == (USERNAME.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False)  # handled=True on failure leaves the client waiting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_relay(pki: Pki, mode: str) -> tuple[TlsRelay, Controller]:
    """mode 'starttls': plain listener that insists on STARTTLS before MAIL and AUTH.
    mode 'implicit': TLS from the first byte (port 465 style). The caller stops the controller."""
    relay = TlsRelay(free_port())
    common = dict(hostname="127.0.0.1", port=relay.port, server_hostname="relay.test",
                  authenticator=relay.authenticate, ready_timeout=10.0)
    if mode == "starttls":
        controller = Controller(relay, tls_context=pki.server_context, require_starttls=True,
                                auth_require_tls=True, **common)
    elif mode == "implicit":
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; here the whole session is encrypted.
        controller = Controller(relay, ssl_context=pki.server_context, auth_require_tls=False, **common)
    else:
        raise ValueError(mode)
    controller.start()
    return relay, controller
