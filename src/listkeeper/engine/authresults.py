"""Authentication-Results (RFC 8601): what the list saw of a post's authentication when it arrived.

The list records, in one field on top of the post before it changes anything, whether the poster's
DKIM signatures verified and what DMARC concluded; delivery copies that field into the ARC set it
seals (delivery/arc.py), so a receiver can trust the original authentication after the list broke it.

The authserv-id is the list domain's host name. A field that arrives already claiming one of our
host names is a forgery (RFC 8601 5: it must be removed), on every message we accept, since delivery
seals whatever such a field says. DMARC passes on an aligned DKIM signature that verified or on an
aligned SPF pass (engine/spfcheck.py) of the MAIL FROM domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from listkeeper.delivery.arc import authserv_id

from .headers import RawMessage
from .snapshot import Snapshot

FIELD = "authentication-results"


@dataclass(frozen=True)
class DkimCheck:
    """One DKIM-Signature of the post and what verifying it gave (RFC 8601 2.7.1 result)."""

    result: str  # pass, fail, permerror, temperror
    domain: str
    selector: str
    b: str = ""  # the first characters of b=, which tell several signatures of one domain apart (RFC 6008)


@dataclass(frozen=True)
class SpfCheck:
    """What SPF (RFC 7208) said of the client for the MAIL FROM domain, or the HELO name for a null sender."""

    result: str  # pass, fail, softfail, neutral, none, temperror, permerror
    domain: str
    identity: str = "mailfrom"  # or "helo"


@dataclass(frozen=True)
class InboundAuth:
    dkim: tuple[DkimCheck, ...] = ()
    dmarc: str = "none"  # pass, fail, none, temperror, permerror
    policy: str | None = None  # the published p= (or sp=) when there is a record
    from_domain: str | None = None
    arc: str = "none"  # the inbound ARC chain: none (no chain), pass, fail
    spf: SpfCheck | None = None  # None: not evaluated (no client address)


def our_ids(snapshot: Snapshot) -> frozenset[str]:
    """The authserv-ids this server reports under: its domains' host names."""
    return frozenset(spec.hostname.lower() for spec in snapshot.domains.values())


def without_forged(message: RawMessage, ours: frozenset[str]) -> RawMessage:
    """The message without Authentication-Results fields that claim to be ours; itself when there are none."""
    if not any(name == FIELD for name, _ in message.fields):
        return message
    kept = tuple((name, raw) for name, raw in message.fields
                 if name != FIELD or authserv_id(_value(raw)) not in ours)
    if len(kept) == len(message.fields):
        return message
    return RawMessage(kept, message.separator, message.body, message.eol)


def _value(raw: bytes) -> str:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    return re.sub(rb"\r?\n[ \t]", b" ", value).strip().decode("utf-8", "replace")


def arc_seals(lst_domain: str, snapshot: Snapshot) -> bool:
    """Whether the list domain's posts are ARC-sealed: its Domain signs with DKIM and has `arc: true`."""
    spec = snapshot.domains.get(lst_domain)
    return spec is not None and spec.dkim is not None and spec.dkim.arc


# --- DMARC (RFC 7489 3.1, 4.2) on the results of DKIM and SPF ------------------------------------------

def aligned(signer: str, from_domain: str, organisation: str, strict: bool) -> bool:
    """Whether a signing domain aligns with the From domain: the same name (strict), or both at or below
    the name that published the DMARC record, which stands for the organisational domain (relaxed)."""
    signer, from_domain = signer.lower().rstrip("."), from_domain.lower().rstrip(".")
    if strict or signer == from_domain:
        return signer == from_domain
    return all(name == organisation or name.endswith("." + organisation) for name in (signer, from_domain))


def dmarc_result(from_domain: str, checks: tuple[DkimCheck, ...],
                 record: tuple[str, dict[str, str]] | None, spf: SpfCheck | None = None) -> str:
    """pass when an aligned signature verified or SPF passed for an aligned MAIL FROM domain (adkim= and
    aspf= say how strictly); else, under a record, temperror when an aligned key or SPF could not be looked
    up, fail otherwise; none without a record."""
    if record is None:
        return "none"
    organisation, tags = record
    strict = tags.get("adkim") == "s"
    results = {c.result for c in checks if aligned(c.domain, from_domain, organisation, strict)}
    if spf is not None and aligned(spf.domain, from_domain, organisation, tags.get("aspf") == "s"):
        results.add(spf.result)
    if "pass" in results:
        return "pass"
    return "temperror" if "temperror" in results else "fail"  # a key that may yet verify is no failure


# --- the field -----------------------------------------------------------------------------------------

def field_value(auth: InboundAuth, server_id: str) -> str:
    """`host; dkim=pass header.d=... header.s=... header.b=...; spf=pass smtp.mailfrom=...; dmarc=...;
    arc=...` (RFC 8601 2.2)."""
    parts = [server_id]
    for check in auth.dkim:
        part = f"dkim={check.result} header.d={_pvalue(check.domain)} header.s={_pvalue(check.selector)}"
        b = re.sub(r"[^A-Za-z0-9+/=]", "", check.b)
        parts.append(part + (f" header.b={b}" if b else ""))
    if not auth.dkim:
        parts.append("dkim=none")
    if auth.spf is not None:
        parts.append(f"spf={auth.spf.result} smtp.{auth.spf.identity}={_pvalue(auth.spf.domain)}")
    dmarc = f"dmarc={auth.dmarc}"
    if auth.policy:
        dmarc += f" (p={auth.policy})"
    if auth.from_domain:
        dmarc += f" header.from={_pvalue(auth.from_domain)}"
    parts.append(dmarc)
    parts.append(f"arc={auth.arc}")
    return "; ".join(parts)


def _pvalue(text: str) -> str:
    """A value the poster chose (a signature's d= or s=, the From domain) as one property value: a
    quoted-string unless it is a plain name, so `;`, `=`, `(` or spaces in it cannot add or hide results."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", text):
        return text
    return '"' + re.sub(r'(["\\])', r"\\\1", re.sub(r"[\x00-\x1f\x7f]", "", text)) + '"'


def stamped(message: RawMessage, auth: InboundAuth, server_id: str) -> RawMessage:
    """The post with our Authentication-Results on top (a trace field: newest first)."""
    return message.with_field("Authentication-Results", field_value(auth, server_id), first=True)

