"""Passwords of SMTP accounts: a secret holds either the password itself or a stored hash of it.

Shared by validation (a secret that cannot be read, or a hash that cannot be parsed, is an error at
file:line) and by the SMTP listener, which checks a login against it. Hashes are the usual
interchange formats, so they can be made with the tools operators already have:

- argon2id in the PHC format, `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH` (the argon2 command,
  argon2-cffi, passlib; Dovecot's `{ARGON2ID}` prefix is accepted) — what `listkeeper hash-password` writes;
- scrypt in passlib's format, `$scrypt$ln=16,r=8,p=1$SALT$HASH`.

Any other value that looks like a hash (`$NAME$...` or `{SCHEME}...`) is refused rather than taken
for a password; everything else is a password compared as is. Comparisons take constant time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from .common import SecretRef

_LOOKS_HASHED = re.compile(r"^(\{[A-Za-z0-9._-]+\})?\$[A-Za-z0-9-]+\$")
_ARGON2ID = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")
_SCRYPT = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9./+]+)\$([A-Za-z0-9./+]+)$")
SCHEMES = ("argon2id", "scrypt")
# hash schemes an error may name (crypt ids, passlib and Dovecot names); anything else may be a password's text
_KNOWN_SCHEMES = frozenset({
    "1", "2", "2a", "2b", "2x", "2y", "3", "5", "6", "7", "y", "gy", "md5", "apr1", "sha1", "argon2i", "argon2d",
    "bcrypt", "bcrypt-sha256", "pbkdf2", "pbkdf2-sha1", "pbkdf2-sha256", "pbkdf2-sha512", "scram", "sm3",
    "sha512-crypt", "sha256-crypt", "blf-crypt", "md5-crypt", "crypt", "ssha", "ssha256", "ssha512", "sha",
    "sha256", "sha512", "smd5", "plain-md5", "ldap-md5", "cram-md5", "digest-md5", "scram-sha-1", "scram-sha-256",
})
# what `listkeeper hash-password` uses: OWASP's argon2id minimum (19 MiB, 2 passes); about 30 ms
ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES = 19456, 2, 1


class PasswordProblem(ValueError):
    """Why a stored password cannot be used; never contains the password or the hash."""


@dataclass(frozen=True)
class _Argon2id:
    memory: int
    passes: int
    lanes: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        derived = Argon2id(salt=self.salt, length=len(self.digest), iterations=self.passes, lanes=self.lanes,
                           memory_cost=self.memory).derive(password)
        return hmac.compare_digest(derived, self.digest)


@dataclass(frozen=True)
class _Scrypt:
    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        derived = hashlib.scrypt(password, salt=self.salt, n=1 << self.log_n, r=self.r, p=self.p,
                                 dklen=len(self.digest), maxmem=256 * self.r * (1 << self.log_n) + (1 << 20))
        return hmac.compare_digest(derived, self.digest)


@dataclass(frozen=True)
class _Plain:
    password: bytes = b""

    def matches(self, password: bytes) -> bool:  # digests first: equal lengths, so no length shows
        return hmac.compare_digest(hashlib.sha256(password).digest(), hashlib.sha256(self.password).digest())


Stored = _Argon2id | _Scrypt | _Plain


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse(value: str) -> Stored:
    """The stored form of a password: a supported hash, or the password itself."""
    if not _LOOKS_HASHED.match(value):
        return _Plain(value.encode("utf-8", "surrogateescape"))  # an environment's non-UTF-8 bytes, as they are
    text = re.sub(r"^\{ARGON2ID\}", "", value, flags=re.IGNORECASE)
    try:
        if found := _ARGON2ID.match(text):
            memory, passes, lanes = (int(found.group(i)) for i in (1, 2, 3))
            stored = _Argon2id(memory, passes, lanes, _b64(found.group(4)), _b64(found.group(5)))
            if not (1 <= lanes <= 255 and memory >= 8 * lanes and 1 <= passes <= 64 and memory <= 1 << 21
                    and len(stored.salt) >= 8 and len(stored.digest) >= 4):
                raise PasswordProblem("the argon2id hash has parameters out of range")
            return stored
        if found := _SCRYPT.match(text):
            log_n, r, p = (int(found.group(i)) for i in (1, 2, 3))
            salt, digest = (_b64(found.group(i).replace(".", "+")) for i in (4, 5))
            if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and digest):
                raise PasswordProblem("the scrypt hash has parameters out of range")
            return _Scrypt(log_n, r, p, salt, digest)
    except (binascii.Error, ValueError) as exc:
        if isinstance(exc, PasswordProblem):
            raise
        raise PasswordProblem("the hash's salt or digest is not valid base64") from None
    scheme = text.split("$")[1] if text.startswith("$") else text[1:].partition("}")[0]
    if scheme in SCHEMES:
        raise PasswordProblem(f"the {scheme} hash is not in the expected format")
    advice = f"use {' or '.join(SCHEMES)} (listkeeper hash-password), or the password itself"
    if scheme.lower() not in _KNOWN_SCHEMES:  # a password of that shape: its first part is not to be shown
        raise PasswordProblem(f"it looks like a password hash of an unsupported scheme ($NAME$... or "
                              f"{{NAME}}$...); {advice}")
    raise PasswordProblem(f"unsupported password hash scheme {scheme!r}; {advice}")


def load_password(secret: SecretRef) -> Stored:
    """Read and parse the secret; raises PasswordProblem saying what is wrong (never the value)."""
    try:
        value = secret.read("the password")
    except ValueError as exc:
        raise PasswordProblem(str(exc)) from None
    if not value:
        raise PasswordProblem(f"the password in {secret.where()} is empty")
    try:
        return parse(value)
    except PasswordProblem as exc:
        raise PasswordProblem(f"{secret.where()}: {exc}") from None


def password_problem(secret: SecretRef) -> str | None:
    try:
        load_password(secret)
    except PasswordProblem as exc:
        return str(exc)
    return None


def hash_password(password: str) -> str:
    """An argon2id hash in the PHC format, with a fresh salt."""
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    salt = os.urandom(16)
    digest = Argon2id(salt=salt, length=32, iterations=ARGON2_PASSES, lanes=ARGON2_LANES,
                      memory_cost=ARGON2_MEMORY_KIB).derive(password.encode("utf-8"))

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii").rstrip("=")

    return (f"$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_PASSES},p={ARGON2_LANES}"
            f"${b64(salt)}${b64(digest)}")


def check(stored: Stored, password: bytes) -> bool:
    return stored.matches(password)


def is_hashed(stored: Stored) -> bool:
    """Whether checking it derives a key (argon2id, scrypt), or only compares (the password itself)."""
    return not isinstance(stored, _Plain)


# compared against when no account has the username: the work of a `hash-password` hash, so the time a
# 535 takes does not tell an unknown username from an account's (which should hold such a hash)
UNKNOWN_USER = _Argon2id(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, os.urandom(16), os.urandom(32))
