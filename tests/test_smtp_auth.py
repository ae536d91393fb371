"""SMTP AUTH on the listener: SmtpAccount manifests, a real engine on loopback, a real smtplib client.

Failed logins reach a Notification's log action and a web hook on a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from listkeeper.engine.login_limit import FailureLimit, LoginLimiter, client_network
from listkeeper.engine.submission import NEEDS_TLS, NOT_OFFERED, auth_refusal, is_loopback
from listkeeper.manifests.passwords import PasswordProblem, check, hash_password, parse

from .conftest import DOMAIN, pickup_routes, wait_for, write
from .test_serve import LISTS, message
from .webhooks import Hooks

CLI = [sys.executable, "-m", "listkeeper"]
PASSWORD = "correct horse battery staple"


def account(name: str, username: str, secret: str, addresses: str = '["alice@example.org"]') -> str:
    return f"""
apiVersion: listkeeper/v1
kind: SmtpAccount
metadata: {{name: {name}}}
spec:
  username: {username}
  password: {secret}
  addresses: {addresses}
"""


def on_login_failed(log_file: Path, hook_url: str) -> str:
    return f"""
apiVersion: listkeeper/v1
kind: Notification
metadata: {{name: logins}}
spec:
  on: [auth.login_failed]
  actions:
    - type: log
      path: {log_file}
    - type: webhook
      url: {hook_url}/auth
"""


def make_conf(tmp_path: Path, *extra: str) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    if extra:
        write(folder, "accounts.yaml", "---\n".join(extra))
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def client(port: int) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
    smtp.ehlo("client.test")
    return smtp


def auth(smtp: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH exchange (smtplib's login() would try each mechanism in turn)."""
    smtp.user, smtp.password = user, password
    method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[mechanism]
    try:
        return smtp.auth(mechanism, method)
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


@pytest.fixture
async def hook():
    started = await Hooks().start()
    yield started
    await started.close()


# -- pure parts -------------------------------------------------------------------------------------

# published examples: the argon2 reference implementation's README, passlib's scrypt documentation
ARGON2_REFERENCE = "$argon2id$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo"
PASSLIB_SCRYPT = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E"


@pytest.mark.parametrize("stored", [ARGON2_REFERENCE, "{ARGON2ID}" + ARGON2_REFERENCE, PASSLIB_SCRYPT, "password"])
def test_stored_passwords_check_the_password_and_nothing_else(stored):
    parsed = parse(stored)
    assert check(parsed, b"password")
    assert not check(parsed, b"Password") and not check(parsed, b"") and not check(parsed, b"password ")


def test_a_password_from_an_environment_variable_that_is_not_utf8_checks_its_bytes(tmp_path):
    """os.environ holds such bytes as surrogate escapes; the client sends the bytes themselves."""
    value = os.fsdecode(b"caf\xe9")  # what os.environ holds for those bytes
    write(tmp_path / "conf", "accounts.yaml", account("alice", "alice@example.org", "{env: LK_TEST_PW}"))
    assert validate(tmp_path / "conf", {"LK_TEST_PW": value}).returncode == 0
    assert check(parse(value), b"caf\xe9") and not check(parse(value), "café".encode())


def test_hash_password_writes_argon2id_that_checks():
    stored = hash_password(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$") and PASSWORD not in stored
    assert check(parse(stored), PASSWORD.encode()) and not check(parse(stored), b"wrong")
    assert hash_password(PASSWORD) != stored  # a fresh salt each time


@pytest.mark.parametrize("stored", ["hash", "password"])
def test_an_unknown_username_costs_what_a_known_one_costs(tmp_path, stored, monkeypatch):
    """verify() runs for every login; if an unknown username answered at once while a real account's
    argon2id took tens of milliseconds (or the other way round, for an account holding its password
    itself, as in the README), the 535's delay would tell which usernames exist. So every answer costs
    exactly one key derivation: counted here, not timed (a timing on a busy machine says little)."""
    from listkeeper.engine import submission
    from listkeeper.manifests.accounts import SmtpAccountSpec

    secret = tmp_path / "alice.secret"
    secret.write_text((hash_password(PASSWORD) if stored == "hash" else PASSWORD) + "\n")
    known = SmtpAccountSpec.model_validate({"username": "alice@example.org", "password": {"file": str(secret)},
                                            "addresses": ["alice@example.org"]})
    derivations = []
    real_check = submission.check

    def counting(kept, password):
        derivations.append(submission.is_hashed(kept))
        return real_check(kept, password)

    monkeypatch.setattr(submission, "check", counting)

    def derived(account, password: bytes) -> int:
        derivations.clear()
        submission.verify(account, password)
        return derivations.count(True)

    assert derived(known, b"a guess") == derived(None, b"a guess") == derived(known, PASSWORD.encode()) == 1
    assert submission.verify(known, PASSWORD.encode()) is True and submission.verify(known, b"a guess") is False


def test_the_hash_password_command_reads_one_line_of_stdin():
    def run(data: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + ["hash-password"], input=data, capture_output=True, timeout=60)

    made = run("café au lait\n".encode())
    assert made.returncode == 0 and made.stderr == b""
    stored = made.stdout.decode().strip()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$") and check(parse(stored), "café au lait".encode())
    for data, expected in [(b"\n", b"Error: an empty password cannot be hashed"),
                           (b"caf\xe9\n", b"Error: the password is not UTF-8 text")]:
        refused = run(data)
        assert refused.returncode == 1 and refused.stderr.strip() == expected, refused.stderr
        assert refused.stdout == b""


@pytest.mark.parametrize("stored, problem", [
    ("$6$rounds=5000$salt$abc", "unsupported password hash scheme '6'"),
    ("{SHA512-CRYPT}$6$salt$abc", "unsupported password hash scheme 'SHA512-CRYPT'"),
    ("$argon2id$v=19$m=65536,t=2$c29tZXNhbHQ$GpZ3", "the argon2id hash is not in the expected format"),
    ("$argon2id$v=19$m=1,t=2,p=4$c29tZXNhbHQ$GpZ3sK/o", "parameters out of range"),
    ("$scrypt$ln=40,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh", "parameters out of range"),
])
def test_hashes_that_cannot_be_used_are_refused_not_taken_for_passwords(stored, problem):
    with pytest.raises(PasswordProblem, match=problem.replace("$", r"\$")):
        parse(stored)


@pytest.mark.parametrize("accounts, tls, peer, mode, expected", [
    (False, True, "127.0.0.1", "always", NOT_OFFERED),
    (True, True, "192.0.2.7", "never", None),
    (True, False, "192.0.2.7", "loopback", NEEDS_TLS),
    (True, False, "127.0.0.1", "loopback", None),
    (True, False, "::1", "loopback", None),
    (True, False, "::ffff:127.0.0.1", "loopback", None),
    (True, False, "127.0.0.1", "never", NEEDS_TLS),
    (True, False, "192.0.2.7", "always", None),
])
def test_when_auth_is_offered(accounts, tls, peer, mode, expected):
    assert auth_refusal(accounts, tls, peer, mode) == expected


@pytest.mark.parametrize("text, expected", [
    ("10/10m", FailureLimit(10, 600)), ("3/60s", FailureLimit(3, 60)), ("3/60", FailureLimit(3, 60)),
    ("5/1.5h", FailureLimit(5, 5400)), ("0", FailureLimit(0, 0)), ("0/10m", FailureLimit(0, 600)),
])
def test_failure_limits_parse(text, expected):
    assert FailureLimit.parse(text) == expected


@pytest.mark.parametrize("text", ["10", "ten/10m", "10/10x", "10/0s", "-1/10m", ""])
def test_failure_limits_that_do_not_parse(text):
    with pytest.raises(ValueError, match="10/10m"):
        FailureLimit.parse(text)


@pytest.mark.parametrize("peer, network", [
    ("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"), ("2001:db8:1:2::ff", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"), ("not-an-ip", "not-an-ip"),
])
def test_failures_are_counted_per_address_and_ipv6_per_64(peer, network):
    assert client_network(peer) == network


def test_the_limiter_blocks_at_the_limit_until_the_window_slides():
    limiter = LoginLimiter(FailureLimit(3, 60))
    assert [limiter.failed("192.0.2.7", t) for t in (0, 10, 20)] == [False, False, True]  # True: becomes blocked
    assert limiter.blocked("192.0.2.7", 20) and limiter.blocked("192.0.2.7", 59.9)
    assert limiter.blocked_until("192.0.2.7", 30) == 60
    assert not limiter.blocked("192.0.2.8", 30)  # others are not
    assert not limiter.blocked("192.0.2.7", 60)  # the first failure left the window: one more guess
    assert limiter.failed("192.0.2.7", 61) and limiter.blocked_until("192.0.2.7", 61) == 70
    assert not limiter.blocked("192.0.2.7", 81) and len(limiter) == 1


def test_the_limiter_remembers_a_bounded_number_of_networks_dropping_the_stalest():
    """An attacker with many addresses cannot grow it without bound."""
    limiter = LoginLimiter(FailureLimit(2, 600), max_entries=100)
    limiter.failed("10.0.0.1", 0)
    limiter.failed("10.0.0.2", 1)
    limiter.failed("10.0.0.2", 2)
    limiter.failed("10.0.0.1", 3)  # blocked, and now the most recently failed
    for i in range(1000):
        limiter.failed(f"10.1.{i // 256}.{i % 256}", 10 + i / 1000)
    assert len(limiter) == 100
    assert not limiter.blocked("10.0.0.2", 20)  # evicted: the stalest
    assert limiter.blocked("10.0.0.1", 20) is False  # evicted too, once 99 newer networks came
    assert limiter.blocked("10.1.3.231", 20) is False and len(limiter) == 100
    limiter.failed("10.1.3.231", 20)
    assert limiter.blocked("10.1.3.231", 20)


def test_a_zero_limit_counts_nothing():
    limiter = LoginLimiter(FailureLimit.parse("0"))
    assert not any(limiter.failed("192.0.2.7", t) for t in range(50))
    assert not limiter.blocked("192.0.2.7", 50) and len(limiter) == 0


def test_loopback_addresses():
    assert is_loopback("127.0.0.9") and is_loopback("::1") and not is_loopback("10.0.0.1")
    assert not is_loopback("") and not is_loopback("not-an-ip")


# -- validation and the plan ------------------------------------------------------------------------

def validate(folder: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["validate", str(folder)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_validate_names_the_place_of_an_unset_secret_and_of_bad_fields(tmp_path):
    write(tmp_path / "conf", "accounts.yaml", account("alice", "alice@example.org", "{env: LK_TEST_UNSET_PW}")
          + "---" + account("bob", "ALICE@example.org", "{env: LK_TEST_PW}", '["bob"]'))
    result = validate(tmp_path / "conf", {"LK_TEST_PW": "s3cret-value"})
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert any(e.endswith("accounts.yaml:6:3: spec.password: cannot read the password from environment "
                          "variable LK_TEST_UNSET_PW: it is not set") for e in errors), errors
    assert any("accounts.yaml:15:15: spec.addresses[0]:" in e and "'bob' is not an address pattern" in e
               for e in errors), errors
    assert "s3cret-value" not in result.stderr + result.stdout


def test_validate_refuses_a_shared_username_and_an_unusable_hash(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("$6$salt$not-a-supported-hash\n")
    write(tmp_path / "conf", "accounts.yaml", account("alice", "alice@example.org", "{env: LK_TEST_PW}")
          + "---" + account("alice2", "Alice@Example.org", f"{{file: {secret}}}"))
    result = validate(tmp_path / "conf", {"LK_TEST_PW": "s3cret-value"})
    assert result.returncode == 1
    assert ("accounts.yaml:13:3: spec.username: alice@example.org is already the username of SmtpAccount "
            "'alice' at") in result.stderr
    assert f"accounts.yaml:14:3: spec.password: file {secret}: unsupported password hash scheme '6'" \
        in result.stderr
    assert "not-a-supported-hash" not in result.stderr


@pytest.mark.parametrize("password", ["$Tr0ub4dor$3", "{K1tten-Mitten}$x$y"])
def test_a_password_that_looks_like_a_hash_is_refused_without_showing_it(tmp_path, password):
    """The refusal names a scheme it knows ($6$, {SHA512-CRYPT}); a password of that shape is not echoed
    into validate's output (CI logs) or the engine's log as if its first part were a scheme's name."""
    write(tmp_path / "conf", "accounts.yaml", account("alice", "alice@example.org", "{env: LK_TEST_PW}"))
    result = validate(tmp_path / "conf", {"LK_TEST_PW": password})
    assert result.returncode == 1
    assert "accounts.yaml:6:3: spec.password: environment variable LK_TEST_PW: it looks like a password hash " \
           "of an unsupported scheme" in result.stderr, result.stderr
    assert "Tr0ub4dor" not in result.stderr and "K1tten" not in result.stderr


def test_the_plan_shows_the_account_with_its_password_sensitive(tmp_path):
    conf = make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}"))
    env = {**os.environ, "LK_TEST_PW": "s3cret-value", "LISTKEEPER_STORE": f"sqlite:///{tmp_path}/lk.db"}
    result = subprocess.run(CLI + ["reconcile", "--dry-run", str(conf)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "+ SmtpAccount/alice will be created" in out
    assert '+ spec.username = "alice@example.org"' in out
    assert "+ spec.password = {env: LK_TEST_PW} (sensitive)" in out
    assert "s3cret-value" not in out + result.stderr


# -- the engine -------------------------------------------------------------------------------------

async def test_plain_and_login_succeed_and_the_account_may_send_only_as_its_addresses(tmp_path, engine_for,
                                                                                     monkeypatch):
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")))

    def session(mechanism: str) -> list:
        with client(engine.port) as smtp:
            seen = [smtp.has_extn("auth") and smtp.esmtp_features["auth"].split(),
                    auth(smtp, mechanism, "Alice@Example.org", PASSWORD), smtp.mail("bob@example.net")]
            smtp.rset()
            seen.append(smtp.sendmail("alice@example.org", ["members@example.org"],
                                      message("alice@example.org", "members@example.org", f"By {mechanism}")))
            return seen

    for mechanism in ("PLAIN", "LOGIN"):
        features, login, refused, sent = await asyncio.to_thread(session, mechanism)
        assert sorted(features) == ["LOGIN", "PLAIN"]
        assert login == (235, b"2.7.0 Authentication successful")
        assert refused == (553, b"5.7.1 <bob@example.net>: Sender address not owned by user alice@example.org")
        assert sent == {}
    await wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) >= 8)


async def test_failed_logins_answer_535_emit_the_event_and_the_third_closes(tmp_path, engine_for, hook,
                                                                            monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    log_file = tmp_path / "var" / "auth.jsonl"
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}"),
                                        on_login_failed(log_file, hook.url)))

    def attempts() -> list:
        with client(engine.port) as smtp:
            replies = [auth(smtp, "PLAIN", "alice@example.org", "guess-one"),
                       auth(smtp, "LOGIN", "nobody@example.org", "guess-two"),
                       auth(smtp, "PLAIN", "alice@example.org", PASSWORD + "!")]
            with pytest.raises(smtplib.SMTPServerDisconnected):
                smtp.noop()
            return replies

    first, second, third = await asyncio.to_thread(attempts)
    assert first == second == (535, b"5.7.8 Authentication credentials invalid")
    assert third[0] == 421
    await wait_for(lambda: len(lines(log_file)) == 3 and len(hook.received) == 3)
    attributes = [line["event"]["attributes"] for line in lines(log_file)]
    assert attributes == [
        {"address": "alice@example.org", "remote_ip": "127.0.0.1", "mechanism": "PLAIN"},
        {"address": "nobody@example.org", "remote_ip": "127.0.0.1", "mechanism": "LOGIN"},
        {"address": "alice@example.org", "remote_ip": "127.0.0.1", "mechanism": "PLAIN"},
    ]
    assert {r.json["event"]["type"] for r in hook.received} == {"auth.login_failed"}
    everything = caplog.text + log_file.read_text() + "".join(r.body.decode() for r in hook.received)
    assert "guess-one" not in everything and "guess-two" not in everything and PASSWORD not in everything
    for wire in (b"\0alice@example.org\0guess-one", b"guess-two"):  # nor as the client sent them
        assert base64.b64encode(wire).decode() not in everything


async def test_a_username_cannot_write_log_lines_or_fields_of_its_own(tmp_path, engine_for, monkeypatch, caplog):
    """The username is the client's: with a line break or a tab it must not start a forged record or a
    field (a fail2ban filter on `peer=` would ban whatever address it names)."""
    caplog.set_level(logging.INFO, logger="listkeeper.smtp")
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")))
    forged = ["x\n2026-01-01 WARNING listkeeper.smtp smtp.auth outcome=failed peer=203.0.113.9",
              "x\tpeer=203.0.113.9"]

    def attempts() -> list:
        with client(engine.port) as smtp:
            return [auth(smtp, "PLAIN", name, "guess") for name in forged]

    assert await asyncio.to_thread(attempts) == [(535, b"5.7.8 Authentication credentials invalid")] * 2
    shown = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "smtp.auth"]
    assert len(shown) == 2
    for message in shown:
        assert "\n" not in message and "\t" not in message, message
        assert message.startswith("smtp.auth outcome=failed peer=127.0.0.1 mechanism=PLAIN failures="), message


async def test_a_stored_argon2id_hash_in_a_file_logs_in(tmp_path, engine_for):
    secret = tmp_path / "alice.hash"
    secret.write_text(hash_password(PASSWORD) + "\n")
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", f"{{file: {secret}}}",
                                                          '["*@example.org"]')))

    def attempts() -> list:
        with client(engine.port) as smtp:
            return [auth(smtp, "LOGIN", "alice@example.org", "wrong"),
                    auth(smtp, "LOGIN", "alice@example.org", PASSWORD), smtp.mail("chair@example.org")]

    assert await asyncio.to_thread(attempts) == [(535, b"5.7.8 Authentication credentials invalid"),
                                                 (235, b"2.7.0 Authentication successful"), (250, b"OK")]


async def test_auth_inside_a_mail_transaction_is_refused(tmp_path, engine_for, monkeypatch):
    """RFC 4954 4: not after MAIL; otherwise a sender the account may not use would have been taken
    before the login, unchecked, in a logged-in session."""
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")))

    def session() -> list:
        with client(engine.port) as smtp:
            return [smtp.mail("bob@example.net"), auth(smtp, "PLAIN", "alice@example.org", PASSWORD),
                    smtp.rset(), auth(smtp, "PLAIN", "alice@example.org", PASSWORD), smtp.mail("bob@example.net")[0]]

    mail, during, _, after, refused = await asyncio.to_thread(session)
    assert mail[0] == 250
    assert during == (503, b"5.5.1 AUTH is not permitted during a mail transaction")
    assert after == (235, b"2.7.0 Authentication successful") and refused == 553


async def test_a_password_secret_that_cannot_be_read_is_a_temporary_failure(tmp_path, engine_for):
    """The operator's fault, not the client's: 454 (try later) rather than 535, which makes mail clients ask
    their user for a new password, and no failed login counted or reported."""
    secret = tmp_path / "alice.hash"
    secret.write_text(hash_password(PASSWORD) + "\n")
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", f"{{file: {secret}}}")))
    moved = secret.rename(tmp_path / "alice.hash.moved")

    def attempts() -> list:
        with client(engine.port) as smtp:
            replies = [auth(smtp, "PLAIN", "alice@example.org", PASSWORD) for _ in range(3)]
            moved.rename(secret)
            return replies + [auth(smtp, "PLAIN", "alice@example.org", PASSWORD)]

    *broken, fixed = await asyncio.to_thread(attempts)
    assert broken == [(454, b"4.7.0 Temporary authentication failure")] * 3
    assert fixed == (235, b"2.7.0 Authentication successful")


async def test_failed_logins_across_connections_block_auth_until_the_window_slides(tmp_path, engine_for,
                                                                                     monkeypatch, caplog):
    """3 failures in 60 seconds from 127.0.0.1, over three connections: the next AUTH gets 454 even with the
    right password (which is not checked, so a right guess is not confirmed), until the window slides. A
    success in between does not wipe the failures before it."""
    caplog.set_level(logging.INFO, logger="listkeeper.smtp")
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")),
                              auth_failure_limit=FailureLimit.parse("3/60s"))
    start = engine.store.now()
    engine.store.clock = lambda: start

    def connection(*attempts: tuple[str, str, str]) -> list:
        with client(engine.port) as smtp:
            return [auth(smtp, *attempt) for attempt in attempts] + [smtp.noop()[0]]

    def attempts() -> list:
        return [connection(("PLAIN", "alice@example.org", "guess-one"), ("LOGIN", "bob@example.org", "guess-two")),
                connection(("PLAIN", "alice@example.org", PASSWORD)),
                connection(("LOGIN", "alice@example.org", "guess-three"), ("PLAIN", "alice@example.org", PASSWORD),
                           ("LOGIN", "alice@example.org", PASSWORD)),
                connection(("PLAIN", "alice@example.org", PASSWORD))]

    blocked = (454, b"4.7.0 Too many failed logins, try again later")
    invalid = (535, b"5.7.8 Authentication credentials invalid")
    first, second, third, fourth = await asyncio.to_thread(attempts)
    assert first == [invalid, invalid, 250]
    assert second == [(235, b"2.7.0 Authentication successful"), 250]
    assert third == [invalid, blocked, blocked, 250]  # the connection stays open: mail to the lists goes on
    assert fourth == [blocked, 250]
    shown = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "auth.blocked"]
    assert shown == [f"auth.blocked remote_ip=127.0.0.1 network=127.0.0.1 limit=3/60s "
                     f"until={round(start + 60, 3)}"]
    assert engine.metrics.registry.get_sample_value("listkeeper_auth_blocked_total") == 1
    assert len([r for r in caplog.records if getattr(r, "event", "") == "smtp.auth"]) == 4  # 3 failed, 1 ok

    engine.store.clock = lambda: start + 60.5
    after = await asyncio.to_thread(connection, ("PLAIN", "alice@example.org", PASSWORD))
    assert after == [(235, b"2.7.0 Authentication successful"), 250]


async def test_logins_checked_at_once_take_the_limit_too(tmp_path, engine_for, monkeypatch):
    """12 connections send a wrong password at the same moment, with a limit of 3: only 3 passwords are
    checked (3 key derivations), the other 9 get 454 unchecked at once. Checked all, a flood of logins from
    one address held the engine's shared thread pool (lease renewal, claims, membership look-ups) for as
    long as the derivations took, though only 3 verdicts were ever said."""
    import threading

    from listkeeper.engine import submission

    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")),
                              auth_failure_limit=FailureLimit.parse("3/60s"))
    checked, release, answered = [], threading.Event(), []
    real_verify = submission.verify

    def held(account, password):
        checked.append(password)
        release.wait(10)
        return real_verify(account, password)

    monkeypatch.setattr(submission, "verify", held)

    def one() -> None:
        with client(engine.port) as smtp:
            answered.append(auth(smtp, "PLAIN", "alice@example.org", "a guess")[0])

    def flood() -> None:
        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        wait = 0
        while len(answered) < 9 and wait < 40:  # the refused answer at once; the checked wait for `release`
            threading.Event().wait(0.1)
            wait += 1
        release.set()
        for thread in threads:
            thread.join(15)

    await asyncio.to_thread(flood)
    assert sorted(answered) == [454] * 9 + [535] * 3
    assert len(checked) == 3


async def test_a_client_hanging_up_during_the_check_keeps_its_place_until_the_check_ends(tmp_path, engine_for,
                                                                                           monkeypatch):
    """AUTH with a wrong password, then hang up at once, 12 times over: the derivations still run, so each
    keeps its place in the count until it ends, and no more than the limit are ever under way; each is a
    failure though its verdict went unheard, so the address is then blocked (hanging up before the answer
    kept the thread pool busy without end, never counted)."""
    import socket
    import threading

    from listkeeper.engine import submission

    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")),
                              auth_failure_limit=FailureLimit.parse("3/60s"))
    checked, release = [], threading.Event()
    real_verify = submission.verify

    def held(account, password):
        checked.append(password)
        release.wait(10)
        return real_verify(account, password)

    monkeypatch.setattr(submission, "verify", held)
    blob = base64.b64encode(b"\0alice@example.org\0a guess").decode()

    def hang_up() -> None:
        with socket.create_connection(("127.0.0.1", engine.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"EHLO client.test\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
            sock.sendall(f"AUTH PLAIN {blob}\r\n".encode())
            threading.Event().wait(0.1)

    def flood() -> list:
        for _ in range(12):
            hang_up()
        started = len(checked)
        release.set()
        for _ in range(50):  # the places come back as the derivations end, as failures
            if engine.metrics.registry.get_sample_value("listkeeper_auth_blocked_total") == 1:
                break
            threading.Event().wait(0.1)
        with client(engine.port) as smtp:
            return [started, auth(smtp, "PLAIN", "alice@example.org", PASSWORD)[0]]

    assert await asyncio.to_thread(flood) == [3, 454]
    assert len(checked) == 3


async def test_auth_failure_limit_zero_blocks_nobody(tmp_path, engine_for, monkeypatch):
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")),
                              auth_failure_limit=FailureLimit.parse("0"))

    def attempts() -> list:
        for _ in range(2):
            with client(engine.port) as smtp:
                [auth(smtp, "PLAIN", "alice@example.org", "guess") for _ in range(2)]
        with client(engine.port) as smtp:
            return auth(smtp, "PLAIN", "alice@example.org", PASSWORD)

    assert await asyncio.to_thread(attempts) == (235, b"2.7.0 Authentication successful")


def test_serve_refuses_an_auth_failure_limit_it_cannot_read(tmp_path):
    from click.testing import CliRunner

    from listkeeper.cli import main
    result = CliRunner().invoke(main, ["serve", "--auth-failure-limit", "ten", "--store",
                                       f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 2
    assert "'ten' is not a limit such as 10/10m, 3/60s or 0 (off)" in result.output
    assert not (tmp_path / "s.db").exists()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, ssl.SSLContext]:
    ca = trustme.CA()
    path = tmp_path / "listener.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(path))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    return str(path), trusting


async def test_auth_waits_for_starttls_when_plaintext_auth_is_never(tmp_path, engine_for, certificate,
                                                                    monkeypatch):
    monkeypatch.setenv("LK_TEST_PW", PASSWORD)
    cert, trusting = certificate
    engine = await engine_for(make_conf(tmp_path, account("alice", "alice@example.org", "{env: LK_TEST_PW}")),
                              tls_cert=cert, plaintext_auth="never")

    def session() -> list:
        with client(engine.port) as smtp:
            before = (smtp.has_extn("starttls"), smtp.has_extn("auth"), smtp.docmd("AUTH", "PLAIN"))
            smtp.starttls(context=trusting)
            smtp.ehlo("client.test")
            after = (smtp.has_extn("auth"), auth(smtp, "PLAIN", "alice@example.org", PASSWORD))
            return [before, after]

    before, after = await asyncio.to_thread(session)
    assert before == (True, False, (538, b"5.7.11 Encryption required for requested authentication mechanism"))
    assert after == (True, (235, b"2.7.0 Authentication successful"))


async def test_without_accounts_auth_is_not_offered_even_over_tls(tmp_path, engine_for, certificate):
    cert, trusting = certificate
    engine = await engine_for(make_conf(tmp_path), tls_cert=cert, plaintext_auth="always")

    def session():
        with client(engine.port) as smtp:
            smtp.starttls(context=trusting)
            smtp.ehlo("client.test")
            return smtp.has_extn("auth"), smtp.docmd("AUTH", "PLAIN")

    assert await asyncio.to_thread(session) == (False, (502, b"5.5.1 Authentication is not offered here"))


def test_serve_refuses_a_key_without_its_certificate(tmp_path):
    """--tls-key alone would be ignored silently; serve says what is missing and stops before anything starts."""
    from click.testing import CliRunner

    from listkeeper.cli import main
    key = tmp_path / "key.pem"
    key.write_text("not used")
    result = CliRunner().invoke(main, ["serve", "--tls-key", str(key), "--store", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 2
    assert "--tls-key needs --tls-cert" in result.output
    assert not (tmp_path / "s.db").exists()
