"""Checking a post's authentication on arrival: its DKIM signatures, its ARC chain, SPF, DMARC on them.

DNS goes through the RoutingTable's name servers with our resolver and its cache (the one DMARC
mitigation uses): the keys every signature and ARC set names are fetched first, concurrently, then
dkimpy verifies in a worker thread against those answers, so neither DNS nor RSA blocks the loop.
SPF (spfcheck.py) runs alongside, in threads of its own that put their questions to the same resolver.
Bounded: at most MAX_SIGNATURES signatures and MAX_KEYS key lookups per post. Never raises: what
cannot be checked is reported as temperror or permerror, and the post goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from email.utils import getaddresses

import dkim
import dns.rdatatype
from dkim.util import InvalidTagValueList, parse_tag_value

from listkeeper.delivery.resolver import Failure

from .authresults import DkimCheck, InboundAuth, arc_seals, dmarc_result
from .dmarc import PolicyLookup, from_domain, policy_of
from .headers import RawMessage
from .recipients import Recipient, Target
from .snapshot import Snapshot
from .spfcheck import Arrival, SpfChecker

log = logging.getLogger("listkeeper.authentication")

MAX_SIGNATURES = 5
MAX_KEYS = 12
_SPACE = re.compile(rb"\s+")


def _tags(raw: bytes) -> dict[bytes, bytes]:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    try:
        return parse_tag_value(_SPACE.sub(b" ", value).strip())
    except (InvalidTagValueList, ValueError):
        return {}


def key_name(tags: dict[bytes, bytes]) -> str | None:
    """SELECTOR._domainkey.DOMAIN for a signature's tags, lower case; None when it names none."""
    selector, domain = tags.get(b"s", b"").strip(), tags.get(b"d", b"").strip()
    if not selector or not domain:
        return None
    return f"{selector.decode('ascii', 'replace')}._domainkey.{domain.decode('ascii', 'replace')}".lower().rstrip(".")


class Authenticator:
    def __init__(self, dmarc: PolicyLookup):
        self._dmarc = dmarc
        self._spf = SpfChecker()

    def close(self) -> None:
        self._spf.close()

    async def for_posts(self, data: bytes, recipients: list[Recipient], snapshot: Snapshot,
                        arrival: Arrival | None = None) -> InboundAuth | None:
        """The post's results when a list posted to seals with ARC (nobody else reads them); never raises."""
        sealing = [r for r in recipients if r.target is Target.post and arc_seals(r.list.domain, snapshot)]
        if not sealing:
            return None
        try:
            return await self.check(data, snapshot, arrival, snapshot.domains[sealing[0].list.domain].hostname)
        except Exception:  # noqa: BLE001 - the post goes on, its copies unsealed
            log.exception("authentication: checking a post failed; it is not sealed")
            return None

    async def check(self, data: bytes, snapshot: Snapshot, arrival: Arrival | None = None,
                    receiver: str = "unknown") -> InboundAuth:
        message = RawMessage.parse(data)
        signatures = [_tags(raw) for name, raw in message.fields if name == "dkim-signature"][:MAX_SIGNATURES]
        arc_sets = [_tags(raw) for name, raw in message.fields if name in ("arc-seal", "arc-message-signature")]
        names = list(dict.fromkeys(n for n in map(key_name, signatures + arc_sets) if n))[:MAX_KEYS]
        author = from_domain(message)
        keys, record, spf = await asyncio.gather(self._keys(names, snapshot), self._record(author, snapshot),
                                                 self._sender(arrival, snapshot, receiver))
        checks, chain = await asyncio.to_thread(_verify, data, signatures, bool(arc_sets), keys)
        if author is None:
            dmarc, policy = "none", None
        elif _several_authors(message):  # RFC 7489 6.6.1: no verdict the first author's signature could earn
            dmarc, policy = "permerror", None
        elif isinstance(record, Failure):
            dmarc, policy = "temperror", None
        else:
            dmarc = dmarc_result(author, checks, record, spf)
            policy = policy_of(record[1], record[0] != author) if record else None
        auth = InboundAuth(checks, dmarc, policy, author, chain, spf)
        log.info("authentication from=%s dkim=%s spf=%s dmarc=%s arc=%s", author or "-",
                 ",".join(f"{c.result}:{c.domain}" for c in checks) or "none",
                 f"{spf.result}:{spf.domain}" if spf else "-", dmarc, chain)
        return auth

    async def _sender(self, arrival: Arrival | None, snapshot: Snapshot, receiver: str):
        if arrival is None:
            return None
        return await self._spf.check(arrival, self._dmarc.resolver(snapshot), receiver)

    async def _record(self, domain: str | None, snapshot: Snapshot):
        if domain is None:
            return None
        try:
            return await self._dmarc.record(domain, snapshot)
        except Exception as exc:  # noqa: BLE001 - reported as temperror, the post goes on
            return Failure(f"{type(exc).__name__}: {exc}")

    async def _keys(self, names: list[str], snapshot: Snapshot) -> dict[str, bytes | Failure | None]:
        """Each key record's text (the strings of its first TXT record joined), None when there is none."""
        resolver = self._dmarc.resolver(snapshot)

        async def one(name: str):
            try:
                answer = await resolver.lookup(name, dns.rdatatype.TXT)
            except Exception as exc:  # noqa: BLE001
                return Failure(f"{type(exc).__name__}: {exc}")
            if isinstance(answer, Failure):
                return answer
            texts = [b"".join(r.strings) for r in answer.records if r.rdtype == dns.rdatatype.TXT]
            return texts[0] if texts else None

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))


def _several_authors(message: RawMessage) -> bool:
    """More than one From field, or From addresses in more than one domain."""
    fields = message.get_all("from")
    domains = {addr.rpartition("@")[2].strip().lower() for _, addr in getaddresses(fields) if "@" in addr}
    return len(fields) > 1 or len(domains) > 1


def _verify(data: bytes, signatures: list[dict[bytes, bytes]], arc_present: bool,
            keys: dict[str, bytes | Failure | None]) -> tuple[tuple[DkimCheck, ...], str]:
    """dkimpy's verdict on each signature and on the ARC chain, with keys looked up before."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        found = keys.get(name.decode("ascii", "replace").lower().rstrip("."))
        return found if isinstance(found, bytes) else None

    checks = []
    for index, tags in enumerate(signatures):
        domain = tags.get(b"d", b"").decode("ascii", "replace").strip().lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
        b = _SPACE.sub(b"", tags.get(b"b", b""))[:8].decode("ascii", "replace")
        looked_up = keys.get(key_name(tags) or "")
        if isinstance(looked_up, Failure):
            result = "temperror"
        elif looked_up is None:
            result = "permerror"  # no key (or too many keys to look up): RFC 6376 6.1.2 PERMFAIL
        else:
            try:
                result = "pass" if dkim.DKIM(data).verify(idx=index, dnsfunc=dnsfunc) else "fail"
            except dkim.ValidationError:  # e.g. the body hash differs: the post was changed on the way
                result = "fail"
            except dkim.DKIMException:  # malformed signature or key
                result = "permerror"
            except Exception:  # noqa: BLE001 - a signature dkimpy chokes on is not a valid one
                log.exception("dkim: verifying signature %d of d=%s failed", index, domain)
                result = "permerror"
        checks.append(DkimCheck(result, domain, selector, b))
    chain = "none"
    if arc_present:
        try:
            cv = dkim.arc_verify(data, dnsfunc=dnsfunc)[0]
        except Exception:  # noqa: BLE001
            log.exception("arc: verifying the inbound chain failed")
            cv = None
        chain = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
    return tuple(checks), chain
