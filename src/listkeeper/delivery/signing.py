"""DKIM signatures (RFC 6376) on every copy as it leaves, after the last header change.

Which key signs: the Domain whose `domain` is the From address's domain or a parent of it (so mail
From MAILER-DAEMON@lists.example.org is signed by example.org, aligned for DMARC); when no such
Domain has a key, the envelope sender's (a list post keeps its poster's From, so it is signed by the
list's domain, d=example.org, from LIST-bounces@example.org). Mail of neither goes out unsigned.

Canonicalisation and header selection are dkimpy's (`relaxed/simple`, as dkimpy signs by default);
the RSA operation is OpenSSL's through `cryptography`: dkimpy's pure-Python RSA costs about 8 ms
per signature with a 2048-bit key, OpenSSL about 0.4 ms, and a list post is signed once per copy
because each copy carries its own List-Unsubscribe link.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass
from email.utils import getaddresses

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim import hash_headers, rfc822_parse
from dkim.canonicalization import CanonicalizationPolicy

from listkeeper.manifests.signing_keys import KeyProblem, load_dkim_key

from . import arc

log = logging.getLogger("listkeeper.delivery")

CANONICALIZATION = b"relaxed/simple"
POLICY = CanonicalizationPolicy.from_c_value(CANONICALIZATION)
WIDTH = 76  # folded lines of the signature field stay this short
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class DomainKey:
    """One domain's signing key, parsed once."""

    domain: str
    selector: str
    headers: tuple[bytes, ...]  # lower-case field names to sign
    key: rsa.RSAPrivateKey
    arc: bool = False  # ARC-seal the list posts it signs (delivery/arc.py)

    def signature(self, fields: list, body: bytes, eol: bytes, now: float) -> bytes:
        """The DKIM-Signature field (with its line end) for a message as it is sent."""
        present: dict[bytes, int] = {}
        for name, _ in fields:
            present[name.lower()] = present.get(name.lower(), 0) + 1
        # once per occurrence and once more: a field added after signing breaks the signature
        include = [name for name in self.headers for _ in range(present.get(name, 0) + 1)]
        body_hash = base64.b64encode(hashlib.sha256(POLICY.canonicalize_body(crlf(body))).digest())
        tags = [b"v=1;", b"a=rsa-sha256;", b"c=" + CANONICALIZATION + b";", b"d=" + self.domain.encode() + b";",
                b"s=" + self.selector.encode() + b";", b"t=%d;" % int(now)]
        tags += list_tag(include) + [b"bh=" + body_hash + b";", b"b="]
        hasher = hashlib.sha256()
        hash_headers(hasher, POLICY, POLICY.canonicalize_headers(fields), include,
                     (b"DKIM-Signature", b" " + b" ".join(tags)), None)
        signed = self.key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        value = base64.b64encode(signed)
        pieces = [value[i:i + WIDTH - 2] for i in range(0, len(value), WIDTH - 2)]
        tags[-1] += pieces[0]
        return fold_tokens([b"DKIM-Signature:"] + tags + pieces[1:], eol)


def list_tag(names: list[bytes]) -> list[bytes]:
    """h=from:from:to: ... as foldable tokens (FWS may follow each colon)."""
    tokens = [name + b":" for name in names]
    tokens[0] = b"h=" + tokens[0]
    tokens[-1] = tokens[-1][:-1] + b";"
    return tokens


def fold_tokens(tokens: list[bytes], eol: bytes) -> bytes:
    lines, line = [], tokens[0]
    for token in tokens[1:]:
        if len(line) + 1 + len(token) > WIDTH:
            lines.append(line)
            line = b" " + token
        else:
            line += b" " + token
    lines.append(line)
    return eol.join(lines) + eol


def split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block without its last line end, body, the message's line end)."""
    found = _HEAD_END.search(data)
    if found is None:
        head, body = data.rstrip(b"\r\n"), b""
    else:
        head, body = data[:found.start()], data[found.end():]
    eol = b"\r\n" if b"\r\n" in head[:2000] or not head else b"\n"
    return head, body, eol


def crlf(body: bytes) -> bytes:
    """The body as it travels over SMTP: every line ending CRLF."""
    return body if body.count(b"\n") == body.count(b"\r\n") else _BARE_LF.sub(b"\r\n", body)


def header_fields(head: bytes) -> list:
    """[name, raw value] pairs, as dkimpy reads them."""
    return rfc822_parse(head + b"\r\n")[0]


def signing_domain(fields: list, return_path: str, keys) -> str | None:
    """The Domain (with a key) that signs: the From address's, else the envelope sender's."""
    from_values = [value.decode("utf-8", "replace") for name, value in fields if name.lower() == b"from"]
    candidates = [addr.rpartition("@")[2] for _, addr in getaddresses(from_values) if "@" in addr]
    candidates.append(return_path.rpartition("@")[2])
    for host in candidates:
        host = host.strip().strip(">").lower()
        labels = host.split(".")
        for i in range(len(labels) - 1):  # the domain itself, then its parents
            if ".".join(labels[i:]) in keys:
                return ".".join(labels[i:])
    return None


class Signing:
    """The current configuration's keys, parsed when it first signs with them."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._keys: dict[str, DomainKey | None] = {}
        self._ours: frozenset[str] = frozenset()  # our authserv-ids: the domains' host names
        self._sealer = arc.Sealer()

    def keys(self, snapshot) -> dict[str, DomainKey | None]:
        if snapshot.generation != self._generation:
            self._keys = {name: _load(name, spec.dkim) for name, spec in snapshot.domains.items()
                          if spec.dkim is not None}
            self._ours = frozenset(spec.hostname.lower() for spec in snapshot.domains.values())
            self._sealer = arc.Sealer()  # sets made with the previous keys are not reused
            self._generation = snapshot.generation
        return self._keys

    def sign(self, data: bytes, return_path: str, snapshot, now: float) -> bytes:
        """`data` with a DKIM-Signature on top (and below it an ARC set, for a post of a domain that seals),
        or unchanged when no served domain of it has a key."""
        keys = self.keys(snapshot)
        if not keys:
            return data
        try:
            head, body, eol = split(data)
            fields = header_fields(head)
            domain = signing_domain(fields, return_path, keys)
            key = keys.get(domain) if domain else None
            if key is None:
                return data
            return key.signature(fields, body, eol, now) + (self._seal(fields, body, eol, key, now) if key.arc
                                                             else b"") + data
        except Exception:  # noqa: BLE001 - e.g. a header line dkimpy cannot read: sent unsigned, never lost
            log.exception("dkim: could not sign a message from %s; it goes out unsigned", return_path or "<>")
            return data

    def _seal(self, fields: list, body: bytes, eol: bytes, key: DomainKey, now: float) -> bytes:
        try:
            return self._sealer.seal(fields, body, eol, key, self._ours, now)
        except Exception:  # noqa: BLE001 - the copy still leaves, DKIM-signed
            log.exception("arc: could not seal a copy for %s; it goes out without an ARC set", key.domain)
            return b""


def _load(domain: str, dkim) -> DomainKey | None:
    try:
        key = load_dkim_key(dkim.key)
    except KeyProblem as exc:  # validated on reconcile, so the file changed since: mail goes out unsigned
        log.error("dkim: %s; mail of %s goes out unsigned until the configuration changes", exc, domain)
        return None
    return DomainKey(domain, dkim.selector, tuple(name.encode("ascii") for name in dkim.headers), key, dkim.arc)
