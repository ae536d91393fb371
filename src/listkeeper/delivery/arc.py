"""ARC sealing (RFC 8617) of list posts as each copy leaves, with the domain's DKIM key.

A list that adds a subject prefix or rewrites From breaks the poster's DKIM signature; the ARC set
tells the receiver what the list saw on arrival (the post's Authentication-Results, engine/
authresults.py), signed by the list: ARC-Authentication-Results (those results), ARC-Message-Signature
(the copy as sent, like a DKIM signature, relaxed/relaxed) and ARC-Seal (the chain of sets so far).

Sealed: a copy that carries an Authentication-Results field of ours, i.e. a post the list accepted
(our own notices, digests and reports carry none and are merely DKIM-signed). The chain continues
an inbound one: i= one above the highest, cv=pass when the inbound chain verified on arrival (arc=pass
in our results), cv=fail (sealing only our own set) when it did not, cv=none for the first set.

This follows dkimpy's `arc_sign` (its canonicalisation and header selection, verified by its
`arc_verify` in the tests) but signs with OpenSSL through `cryptography` and the key parsed once per
configuration: dkimpy's `arc_sign` costs about 19 ms per copy (pure-Python RSA, the key parsed each time).

And one set serves every copy of a post: the ARC-Message-Signature leaves out the fields delivery sets
per recipient (List-Unsubscribe and List-Unsubscribe-Post, which the list's DKIM signature covers), so
copies differ in nothing the set signs, and `Sealer` reuses it for each copy with the same signed
content. Sealing then costs two RSA signatures per post, not per copy.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections import OrderedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from dkim import hash_headers
from dkim.canonicalization import CanonicalizationPolicy

from . import signing  # its field helpers; signing calls back into seal() (attributes resolve at call time)

log = logging.getLogger("listkeeper.delivery")

CANONICALIZATION = b"relaxed/relaxed"  # the only one ARC uses
POLICY = CanonicalizationPolicy.from_c_value(CANONICALIZATION)
MAX_INSTANCE = 50  # RFC 8617 4.2.1: no set beyond i=50
RESULTS = b"authentication-results"
SET = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")
PER_COPY = frozenset({b"list-unsubscribe", b"list-unsubscribe-post"})  # set per recipient (engine/oneclick.py)
REUSE_FOR = 300.0  # seconds a set is reused for copies of the same post (its t= stays truthful)
KEPT = 64  # sets remembered: the posts a delivery run has in flight at once
_INSTANCE = re.compile(rb"^\s*i\s*=\s*(\d+)\s*(;|$)")
_COMMENT = re.compile(r"\([^()]*\)")
_ARC_RESULT = re.compile(r"(?:^|;)\s*arc\s*=\s*(\w+)", re.I)


def authserv_id(value: str) -> str:
    """The authserv-id an Authentication-Results value starts with, lower case ('' when there is none)."""
    words = _COMMENT.sub(" ", value).split(";", 1)[0].split()  # any white space, tabs too, ends it
    return words[0].strip('"').lower() if words else ""  # a quoted-string names the same id


def _unfolded(value: bytes) -> bytes:
    return re.sub(rb"\r?\n[ \t]", b" ", value).strip()


def our_results(fields: list, ours: frozenset[str]) -> bytes | None:
    """The topmost Authentication-Results value of ours (`host; dkim=...`), or None."""
    for name, value in fields:
        if name.lower() == RESULTS:
            text = _unfolded(value)
            if authserv_id(text.decode("utf-8", "replace")) in ours:
                return text
    return None


def highest_instance(fields: list) -> int:
    """The highest i= of the ARC-Seal fields the copy already carries (0: no chain)."""
    found = [int(m.group(1)) for name, value in fields if name.lower() == b"arc-seal"
             if (m := _INSTANCE.match(_unfolded(value)))]
    return max(found, default=0)


def chain_status(previous: int, results: bytes) -> bytes:
    """cv= of the new set: none for the first; pass only when our results say the chain verified."""
    if previous == 0:
        return b"none"
    found = _ARC_RESULT.findall(results.decode("utf-8", "replace").split(";", 1)[-1])
    return b"pass" if found and found[-1].lower() == "pass" else b"fail"  # ours is last (field_value)


def seal(fields: list, body: bytes, eol: bytes, key, ours: frozenset[str], now: float) -> bytes:
    """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, with line ends) to put
    on top of the copy, or b"" when it is not a post of ours or the chain is too long already.
    `key` is the signing domain's DomainKey; `fields` the copy's header fields as dkimpy reads them."""
    results = our_results(fields, ours)
    if results is None:
        return b""
    previous = highest_instance(fields)
    instance = previous + 1
    if instance > MAX_INSTANCE:
        log.warning("arc: the copy already has %d ARC sets; it is not sealed again", previous)
        return b""
    cv = chain_status(previous, results)
    i = b"i=%d;" % instance
    stamp = [b"a=rsa-sha256;", b"d=" + key.domain.encode() + b";", b"s=" + key.selector.encode() + b";",
             b"t=%d;" % int(now)]
    aar = signing.fold_tokens([b"ARC-Authentication-Results:", i] + results.split(b" "), eol)

    present: dict[bytes, int] = {}
    for name, _ in fields:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    include = [name for name in key.headers if name not in PER_COPY for _ in range(present.get(name, 0) + 1)]
    body_hash = base64.b64encode(hashlib.sha256(POLICY.canonicalize_body(signing.crlf(body))).digest())
    ams_tags = [i, stamp[0], b"c=" + CANONICALIZATION + b";", *stamp[1:]]
    ams_tags += signing.list_tag(include) + [b"bh=" + body_hash + b";", b"b="]
    ams = _signed(b"ARC-Message-Signature", ams_tags, POLICY.canonicalize_headers(fields), include, key, eol)

    new = signing.header_fields(aar + ams)
    if cv == b"fail":  # a broken chain is not vouched for: the seal covers our own set alone
        covered, names = new, [SET[0], SET[1]]
    else:
        covered, names = new + fields, [*SET * previous, SET[0], SET[1]]
    seal_tags = [i, b"cv=" + cv + b";", *stamp, b"b="]
    arc_seal = _signed(b"ARC-Seal", seal_tags, POLICY.canonicalize_headers(covered), names, key, eol)
    return arc_seal + ams + aar


def _signed(name: bytes, tags: list[bytes], canonical: list, include: list[bytes], key, eol: bytes) -> bytes:
    """The field `name` with its b= computed over `include` (picked bottom-up, as dkimpy does) and itself."""
    hasher = hashlib.sha256()
    hash_headers(hasher, POLICY, canonical, include, (name, b" " + b" ".join(tags)), None)
    value = base64.b64encode(key.key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))
    pieces = [value[j:j + signing.WIDTH - 2] for j in range(0, len(value), signing.WIDTH - 2)]
    tags = tags[:-1] + [tags[-1] + pieces[0]]
    return signing.fold_tokens([name + b":"] + tags + pieces[1:], eol)


class Sealer:
    """Seals copies, reusing the set of an earlier copy whose signed content is the same."""

    def __init__(self) -> None:
        self._sets: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def seal(self, fields: list, body: bytes, eol: bytes, key, ours: frozenset[str], now: float) -> bytes:
        digest = hashlib.sha256(b"%s %s %s\0" % (key.domain.encode(), key.selector.encode(), eol))
        for name, value in fields:  # everything but the per-recipient fields: a cache miss, never a wrong set
            if name.lower() not in PER_COPY:
                digest.update(name + b":" + value)
        digest.update(b"\0" + body)
        content = digest.digest()
        found = self._sets.get(content)
        if found is not None and 0 <= now - found[0] < REUSE_FOR:
            self._sets.move_to_end(content)
            return found[1]
        made = seal(fields, body, eol, key, ours, now)
        self._sets[content] = (now, made)
        self._sets.move_to_end(content)
        while len(self._sets) > KEPT:
            self._sets.popitem(last=False)
        return made
