"""SMTP AUTH on the listener, as on a list server's submission port.

AUTH PLAIN and LOGIN are offered once the snapshot has SmtpAccounts and the password cannot be read on
the wire: after STARTTLS, or when the client connects from loopback (`plaintext_auth`: never | loopback
| always). A login that fails answers 535 and emits `auth.login_failed`; the third in one session is
answered with 421 and the connection is closed. Across connections, a client network past its limit of
failures (engine/login_limit.py) gets 454 to AUTH, its password unchecked. A logged-in session may only use the envelope senders
its account lists (553 5.7.1 otherwise). Passwords are checked in a thread (hashes take milliseconds)
and in constant time; neither they nor the hashes are ever logged."""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import logging
from base64 import b64decode
from dataclasses import dataclass

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session
from cryptography.exceptions import UnsupportedAlgorithm

from listkeeper import notify
from listkeeper.logs import note
from listkeeper.manifests.accounts import SmtpAccountSpec
from listkeeper.manifests.passwords import UNKNOWN_USER, PasswordProblem, check, is_hashed, load_password

from .login_limit import LoginLimiter, client_network
from .smtp import ListHandler

log = logging.getLogger("listkeeper.smtp")

PLAINTEXT_AUTH = ("never", "loopback", "always")
MAX_FAILURES = 3  # failed logins in one session before it is closed
NOT_OFFERED = "502 5.5.1 Authentication is not offered here"
NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
SUCCESS = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"
IN_TRANSACTION = "503 5.5.1 AUTH is not permitted during a mail transaction"  # RFC 4954 4
UNAVAILABLE = "454 4.7.0 Temporary authentication failure"
TOO_MANY = "421 4.7.0 Too many failed authentication attempts; closing the connection"
BLOCKED = "454 4.7.0 Too many failed logins, try again later"  # temporary, as Postfix's anvil (450 4.7.1)


@dataclass(frozen=True)
class Login:
    """What a session holds once logged in (session.auth_data): the account, never the password."""

    username: str
    account: SmtpAccountSpec
    mechanism: str


def peer_ip(session: Session) -> str:
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def auth_refusal(has_accounts: bool, encrypted: bool, peer: str, plaintext_auth: str) -> str | None:
    """Why AUTH is not offered to this session, as the reply to an AUTH command; None when it is."""
    if not has_accounts:
        return NOT_OFFERED
    if encrypted or plaintext_auth == "always" or (plaintext_auth == "loopback" and is_loopback(peer)):
        return None
    return NEEDS_TLS


def sender_refusal(login: Login, mail_from: str) -> str | None:
    if login.account.may_send_as(mail_from):
        return None
    return f"553 5.7.1 <{mail_from}>: Sender address not owned by user {login.username}"


def verify(account: SmtpAccountSpec | None, password: bytes) -> bool | None:
    """Blocking (file read, key derivation): run in a thread. Unknown users cost a comparison too.
    None when the account's secret cannot be read or parsed: the server's trouble, not a wrong password."""
    if account is None:
        _decoy(password)
        return False
    try:
        stored = load_password(account.password)
    except PasswordProblem as exc:  # says where the secret is, never what it holds
        log.warning("smtp.auth account=%s cannot be used: %s", account.username, exc)
        return None
    matched = check(stored, password)
    if not is_hashed(stored):  # a password kept as is compares in microseconds: take a hash's time too
        _decoy(password)
    return matched


def _decoy(password: bytes) -> None:
    """The work of checking a `hash-password` hash, so the time of an answer tells no username apart."""
    try:
        check(UNKNOWN_USER, password)
    except UnsupportedAlgorithm:  # an OpenSSL without Argon2 (< 3.2): the answer is the same
        pass


class SubmissionHandler(ListHandler):
    """The list handler with SMTP AUTH: aiosmtpd takes our auth_PLAIN and auth_LOGIN over its own."""

    def __init__(self, *args, plaintext_auth: str = "loopback", limiter: LoginLimiter | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if plaintext_auth not in PLAINTEXT_AUTH:
            raise ValueError(f"plaintext_auth must be one of {', '.join(PLAINTEXT_AUTH)}")
        self._plaintext_auth = plaintext_auth
        self._limiter = limiter if limiter is not None and limiter.limit.enabled else None

    def _blocked(self, session: Session) -> bool:
        return self._limiter is not None and self._limiter.blocked(client_network(peer_ip(session)), self._clock())

    def _refusal(self, session: Session) -> str | None:
        return auth_refusal(bool(self._snapshot(session).accounts), session.ssl is not None, peer_ip(session),
                            self._plaintext_auth)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self._refusal(session) is not None:  # aiosmtpd lists AUTH always (we pass auth_require_tls=False)
            return [r for r in responses if not r.startswith("250-AUTH")]
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        login = session.auth_data if session.authenticated else None
        if isinstance(login, Login) and (reply := sender_refusal(login, address)) is not None:
            return await self._refuse(session, address, (), "auth.sender",
                                      f"{address or '<>'} is not an address of login {login.username}", reply)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if await self._refused(server):
            return AuthResult(success=False, handled=True)
        blob = await _response(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the PLAIN response")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid != login:  # acting for another user is not offered (RFC 4616 authzid)
            password = None
        return await self._login(server, "PLAIN", login, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if await self._refused(server):
            return AuthResult(success=False, handled=True)
        login = await _response(server, args, "Username:")
        password = await server.challenge_auth("Password:") if login is not None else MISSING
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._login(server, "LOGIN", login, password)

    async def _refused(self, server: SMTP) -> bool:
        reply = self._refusal(server.session)
        if reply is None and server.envelope is not None and server.envelope.mail_from is not None:
            reply = IN_TRANSACTION  # the sender was taken unchecked; RSET first
        if reply is None and self._blocked(server.session):  # before the credentials are even read
            reply = BLOCKED
        if reply is not None:
            await server.push(reply)
        return reply is not None

    async def _login(self, server: SMTP, mechanism: str, login: bytes, password: bytes | None) -> AuthResult:
        """Answers the client itself, so aiosmtpd only sees `handled` (and logs no login data)."""
        session = server.session
        username = login.decode("utf-8", "replace").lower()[:254]
        account = self._snapshot(session).accounts.get(username)
        if password is None:
            verdict = False
        elif self._limiter is None:
            verdict = await asyncio.to_thread(verify, account, password)
        elif (verdict := await self._checked(session, account, password)) is BLOCKED:
            await server.push(BLOCKED)
            return AuthResult(success=False, handled=True)
        if verdict is None:  # RFC 4954 454: the client keeps its password and tries later; no failure counted
            await server.push(UNAVAILABLE)
            return AuthResult(success=False, handled=True)
        if self._blocked(session):  # by other connections' failures during this check: the verdict stays unsaid
            await server.push(BLOCKED)
            return AuthResult(success=False, handled=True)
        if verdict:
            session.authenticated = True
            session.auth_data = Login(username, account, mechanism)
            note(log, "smtp.auth", outcome="ok", peer=peer_ip(session), mechanism=mechanism, username=username)
            await server.push(SUCCESS)
            return AuthResult(success=False, handled=True)
        failures = getattr(session, "listkeeper_auth_failures", 0) + 1
        session.listkeeper_auth_failures = failures
        note(log, "smtp.auth", level=logging.WARNING, outcome="failed", peer=peer_ip(session), mechanism=mechanism,
             failures=failures, username=username)  # the client's text last: what it holds comes after our fields
        notify.emit("auth.login_failed", address=username, remote_ip=peer_ip(session), mechanism=mechanism)
        self._count_failure(peer_ip(session))
        if failures >= MAX_FAILURES:
            await server.push(TOO_MANY)
            server.transport.close()
        else:
            await server.push(INVALID)
        return AuthResult(success=False, handled=True)

    async def _checked(self, session: Session, account: SmtpAccountSpec | None, password: bytes) -> bool | None | str:
        """verify() holding a place in the network's count (BLOCKED when none is left) until its thread
        ends. A client that hangs up meanwhile leaves the derivation running and its place taken, and a
        wrong password is still a failure: hanging up never buys a check that does not count."""
        peer = peer_ip(session)
        network = client_network(peer)
        if not self._limiter.check(network, self._clock()):
            return BLOCKED
        checking = asyncio.ensure_future(asyncio.to_thread(verify, account, password))
        checking.add_done_callback(lambda _: self._limiter.checked(network))
        try:
            return await asyncio.shield(checking)
        except asyncio.CancelledError:
            checking.add_done_callback(lambda done: self._unheard(done, peer))
            raise

    def _unheard(self, done: asyncio.Future, peer: str) -> None:
        if not done.cancelled() and done.exception() is None and done.result() is False:
            self._count_failure(peer)

    def _count_failure(self, peer: str) -> None:
        if self._limiter is None:
            return
        network, now = client_network(peer), self._clock()
        if self._limiter.failed(network, now):
            note(log, "auth.blocked", level=logging.WARNING, remote_ip=peer, network=network,
                 limit=str(self._limiter.limit), until=round(self._limiter.blocked_until(network, now), 3))
            if self.metrics is not None:
                self.metrics.auth_blocked.inc()


async def _response(server: SMTP, args: list[str], challenge: str = "") -> bytes | None:
    """The client's initial response (AUTH MECH base64) or its answer to one challenge; None when
    it cancelled or sent something that is not base64 (aiosmtpd has answered 501 then)."""
    if len(args) > 1:
        if args[1] == "=":  # an empty initial response (RFC 4954)
            return b""
        try:
            return b64decode(args[1].encode("ascii", "replace"), validate=True)
        except binascii.Error:
            await server.push("501 5.5.2 Cannot decode base64")
            return None
    blob = await server.challenge_auth(challenge)
    return None if blob is MISSING else blob

