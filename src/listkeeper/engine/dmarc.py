"""DMARC mitigation, as Mailman and Sympa do it: a post from a domain that tells receivers to reject
(or quarantine) mail failing DMARC would be refused once the list changed it, so the list sends it
under its own From (`munge`) or wrapped in a message of its own (`wrap`).

The poster's policy is looked up before the (pure) fan-out, asynchronously, through the RoutingTable's
name servers, and cached for the record's TTL. A lookup that fails is taken as "no policy": the post
is delivered as it came, and the log says so. Nothing is lost for want of DNS.

Munging puts the poster in Reply-To (added to any Reply-To the post had), as Mailman does when the
list does not set Reply-To itself; replies then reach the poster, and "reply all" the list too.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import formataddr, getaddresses, parseaddr

import dns.rdatatype

from listkeeper.delivery.resolver import Failure, MxResolver
from listkeeper.manifests.lists import DmarcMitigation

from .headers import RawMessage, field_line
from .recipients import Recipient, Target
from .signatures import keep_valid_signatures
from .snapshot import ListConfig, Snapshot

log = logging.getLogger("listkeeper.dmarc")

STRICT = frozenset({"reject", "quarantine"})
LOOKED_UP = frozenset({DmarcMitigation.munge, DmarcMitigation.wrap})
MAX_WALK = 8  # DMARCbis: at most this many names are asked on the way up
WRAP_KEEPS = ("to", "cc", "subject", "date", "in-reply-to", "references")


@dataclass(frozen=True)
class PosterPolicy:
    """What the domain in a post's From tells receivers to do with mail that fails DMARC."""

    domain: str
    policy: str | None  # 'reject', 'quarantine', 'none', or None: no record, or the lookup failed


# --- DNS -------------------------------------------------------------------------------------------

def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 6.3), or None for a TXT record that is not one."""
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        return None
    tags = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip().lower())
    return tags


def policy_of(tags: dict[str, str], for_subdomain: bool) -> str | None:
    """p=, or sp= for a name below the one that published the record."""
    value = tags.get("sp", tags.get("p")) if for_subdomain else tags.get("p")
    return value if value in ("none", "quarantine", "reject") else None


def names_to_ask(domain: str) -> list[str]:
    """The domain, then its parents up to (not including) the top-level domain: the DMARCbis tree walk,
    which finds the organisation's record without the Public Suffix List."""
    labels = domain.lower().rstrip(".").split(".")
    names = [".".join(labels[i:]) for i in range(len(labels) - 1)]
    return names[:1] + names[1:][-(MAX_WALK - 1):] if len(names) > MAX_WALK else names


def from_domain(message: RawMessage) -> str | None:
    """The RFC 5322.From domain, which DMARC aligns with; None without one."""
    found = [addr for _, addr in getaddresses(message.get_all("from")) if "@" in addr]
    if not found:
        return None
    return found[0].rpartition("@")[2].strip().lower() or None


class PolicyLookup:
    """Looks up posters' DMARC policies; one resolver (and cache) per DNS configuration."""

    def __init__(self, observe=None) -> None:
        self._resolvers: dict[str, MxResolver] = {}
        self._observe = observe  # counts each DNS query (engine/metrics.py), or None

    def _resolver(self, settings) -> MxResolver:
        key = settings.model_dump_json()
        if key not in self._resolvers:
            self._resolvers[key] = MxResolver([(ns.address, ns.port) for ns in settings.nameservers],
                                              timeout=settings.timeout,
                                              avoid_failing_for=settings.avoid_failing_for, observe=self._observe)
        return self._resolvers[key]

    async def poster_policy(self, data: bytes, recipients: list[Recipient], snapshot: Snapshot) -> PosterPolicy | None:
        """The From domain's policy, when a list posted to may act on it; never raises."""
        if not any(r.target is Target.post and r.list.spec.dmarc in LOOKED_UP for r in recipients):
            return None
        domain = from_domain(RawMessage.parse(data))
        if domain is None or signed_by_us(domain, snapshot):
            return None
        try:
            policy = await self.policy(domain, snapshot)
        except Exception:  # noqa: BLE001 - a post is never refused or lost for want of DNS
            log.exception("dmarc: looking up the policy of %s failed; taken as none", domain)
            policy = None
        return PosterPolicy(domain, policy)

    async def policy(self, domain: str, snapshot: Snapshot) -> str | None:
        found = await self.record(domain, snapshot)
        if isinstance(found, Failure):
            log.warning("dmarc: %s; the post goes out as it came", found.reason)
            return None
        return None if found is None else policy_of(found[1], for_subdomain=found[0] != domain)

    async def record(self, domain: str, snapshot: Snapshot) -> tuple[str, dict[str, str]] | Failure | None:
        """(the name that published it, its tags) for the domain's DMARC record, found by the tree walk;
        None without one; Failure when a name server did not answer."""
        resolver = self._resolver(snapshot.dns)
        for name in names_to_ask(domain):
            answer = await resolver.lookup(f"_dmarc.{name}", dns.rdatatype.TXT)
            if isinstance(answer, Failure):
                return Failure(f"no answer for _dmarc.{name}: {answer.reason}")
            records = [tags for tags in (parse_record(b"".join(r.strings).decode("utf-8", "replace"))
                                         for r in answer.records if r.rdtype == dns.rdatatype.TXT) if tags is not None]
            if len(records) == 1:
                return name, records[0]
            if records:  # several records: RFC 7489 6.6.3 says none applies
                return None
        return None

    def resolver(self, snapshot: Snapshot) -> MxResolver:
        """The resolver (and cache) for the configured name servers, shared with inbound authentication."""
        return self._resolver(snapshot.dns)


def signed_by_us(domain: str, snapshot: Snapshot) -> bool:
    """Mail From a served domain with a DKIM key leaves with an aligned signature: nothing to mitigate."""
    labels = domain.split(".")
    return any(spec.dkim is not None for name, spec in snapshot.domains.items()
               if name in {".".join(labels[i:]) for i in range(len(labels))})


# --- mitigation (pure) -------------------------------------------------------------------------------

def action(setting: DmarcMitigation, poster: PosterPolicy | None) -> str | None:
    """'munge', 'wrap' or None for a list's setting and the poster's policy."""
    if setting is DmarcMitigation.always_munge:
        return "munge"
    if setting in LOOKED_UP and poster is not None and poster.policy in STRICT:
        return setting.value
    return None


def mitigated(message: RawMessage, lst: ListConfig, poster: PosterPolicy | None, hostname: str,
              now: float) -> RawMessage:
    """The post as the list sends it on: as it came, munged, or wrapped."""
    what = action(lst.spec.dmarc, poster)
    if what is None or not message.get_all("from"):
        return message
    log.info("dmarc list=%s domain=%s policy=%s action=%s", lst.name, poster.domain if poster else "-",
             poster.policy if poster else "-", what)
    return munge(message, lst) if what == "munge" else wrap(message, lst, hostname)


def _shown_name(original_from: str) -> str:
    name, address = parseaddr(original_from)
    try:
        name = str(make_header(decode_header(name))) if name else ""
    except (UnicodeError, LookupError, ValueError):
        pass
    return " ".join((name or address or "someone").split())


def _mailbox(name: str, address: str) -> str:
    """"Name" <address>, the name quoted (RFC 5322) or, when not ASCII, encoded (RFC 2047)."""
    if not name.isascii():
        return formataddr((name, address), charset="utf-8")
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


def _list_from(message: RawMessage, lst: ListConfig) -> tuple[str, str]:
    """(the new From, the new Reply-To) for a post shown as coming from the list."""
    original = message.get("from") or ""
    shown = _mailbox(f"{_shown_name(original)} via {lst.name}", lst.spec.address)
    reply_to = message.get_all("reply-to")
    poster = parseaddr(original)[1].lower()
    if poster and poster not in {a.lower() for _, a in getaddresses(reply_to)}:
        reply_to = reply_to + [original]
    return shown, ", ".join(reply_to)


def munge(message: RawMessage, lst: ListConfig) -> RawMessage:
    """From: "Name via List" <list@domain>, the poster in Reply-To; the poster's signatures that this
    breaks are dropped."""
    shown, reply_to = _list_from(message, lst)
    out = message.replace("From", shown)
    if reply_to:
        out = out.replace("Reply-To", reply_to)
    return keep_valid_signatures(message, out)


def wrap(message: RawMessage, lst: ListConfig, hostname: str) -> RawMessage:
    """A message from the list whose body is the post, untouched (its own signatures still verify
    inside), as message/rfc822; To, Cc, Subject, Date and the thread fields stay on the outside."""
    shown, reply_to = _list_from(message, lst)
    eol = message.eol
    original = message.to_bytes()
    head = [field_line("From", shown, eol)]
    if reply_to:
        head.append(field_line("Reply-To", reply_to, eol))
    head += [raw for name, raw in message.fields if name in WRAP_KEEPS]
    head += [f"Message-ID: <{uuid.uuid4().hex}@{hostname}>".encode() + eol,
             b"MIME-Version: 1.0" + eol,
             b"Content-Type: message/rfc822" + eol,
             b"Content-Disposition: inline" + eol,
             b"Content-Transfer-Encoding: " + (b"7bit" if original.isascii() else b"8bit") + eol]
    return RawMessage.parse(b"".join(head) + eol + original)
