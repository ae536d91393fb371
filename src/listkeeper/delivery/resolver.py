"""MX and address lookups for direct delivery, with our own cache and name-server choice.

Mailtraq's adaptive resolver: each configured name server (address and port) is asked
explicitly, in order; one that fails is skipped for a while, so a dead first server costs one
timeout, not one per lookup. Answers, positive and negative, are kept for their TTL.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from .lifecycle import Event
from .transports import Result

NEGATIVE_TTL_CAP = 300  # RFC 2308 §5 lets us cap; a domain fixed by its owner is retried soon
MAX_CNAME_HOPS = 8
MAX_CACHE_ENTRIES = 10_000


class Status(str, Enum):
    records = "records"
    nodata = "nodata"  # the name exists, without records of this type
    nxdomain = "nxdomain"


@dataclass(frozen=True)
class Answer:
    """What one name server said about (name, type), reduced to what delivery needs."""

    status: Status
    records: tuple = ()
    ttl: float = 0
    follow: dns.name.Name | None = None  # a CNAME whose target the server did not answer for


@dataclass(frozen=True)
class Failure:
    """The server could not answer: timeout, refused, SERVFAIL, malformed. Never cached."""

    reason: str


@dataclass
class _Server:
    address: str
    port: int
    lookups: int = 0
    failures: int = 0
    avoid_until: float = field(default=float("-inf"))

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}"


def interpret(response: dns.message.Message) -> Answer | Failure:
    """Reduce a response to an Answer, or a Failure when it says nothing about the name."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Failure(dns.rcode.to_text(rcode))
    if response.flags & dns.flags.TC:
        return Failure("truncated")
    try:
        chain = response.resolve_chaining()
    except (dns.message.ChainTooLong, dns.message.AnswerForNXDOMAIN, dns.message.NotQueryResponse,
            dns.exception.FormError) as exc:
        return Failure(f"malformed: {type(exc).__name__}")
    if chain.answer is not None:
        return Answer(Status.records, tuple(chain.answer), chain.minimum_ttl)
    ttl = min(chain.minimum_ttl, NEGATIVE_TTL_CAP)
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(Status.nxdomain, (), ttl)
    has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
    if chain.cnames and not has_soa:  # an alias into another zone: ask for the target
        return Answer(Status.nodata, (), ttl, follow=chain.canonical_name)
    return Answer(Status.nodata, (), ttl)


def hosts_from_mx(domain: str, answer: Answer) -> list[str] | Result:
    """MX hosts by preference (ties keep answer order), with RFC 5321 §5.1 and RFC 7505 applied."""
    if answer.status is Status.nxdomain:
        return Result(Event.permanent, f"550 5.1.2 domain {domain} does not exist")
    if answer.status is Status.nodata:
        return [domain]  # implicit MX
    exchanges = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer.records]
    real = [(pref, host) for pref, host in exchanges if host not in ("", ".")]
    if not real:
        return Result(Event.permanent, f"556 5.1.10 domain {domain} accepts no mail (null MX)")
    hosts = [host.lower() for _, host in sorted(real, key=lambda item: item[0])]
    return list(dict.fromkeys(hosts))


def ip_literal(host: str) -> str | None:
    """The address when `host` already is one (also as an RFC 5321 literal like [192.0.2.1])."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def query_name(text: str) -> dns.name.Name | None:
    """The absolute name to ask for, or None when `text` cannot be one (empty, bad labels)."""
    text = text.strip()
    if not text or text == ".":
        return None
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError):
        return None


def system_nameservers() -> list[tuple[str, int]]:
    try:
        return [(address, 53) for address in dns.resolver.Resolver(configure=True).nameservers]
    except (dns.resolver.NoResolverConfiguration, OSError):
        return []


class MxResolver:
    """Asks the configured name servers itself so it can pick, skip and count them."""

    def __init__(self, nameservers: list[tuple[str, int]], timeout: float = 5.0,
                 avoid_failing_for: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 observe: Callable[[str, str, bool], None] | None = None):
        self._servers = [_Server(address, int(port)) for address, port in (nameservers or system_nameservers())]
        self._timeout = timeout
        self._avoid_failing_for = avoid_failing_for
        self._clock = clock
        self._cache: dict[tuple[dns.name.Name, int], tuple[float, Answer]] = {}
        self._observe = observe  # (server, query type, answered) for each query sent: the metrics

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return {s.label: {"lookups": s.lookups, "failures": s.failures} for s in self._servers}

    async def mx_hosts(self, domain: str) -> list[str] | Result:
        domain = domain.strip().rstrip(".").lower()
        if ip_literal(domain) is not None:
            return [domain]
        if query_name(domain) is None:
            return Result(Event.permanent, f"550 5.1.2 {domain!r} is not a valid domain name")
        answer = await self.lookup(domain, dns.rdatatype.MX)
        if isinstance(answer, Failure):
            return Result(Event.temporary, f"MX lookup for {domain} failed: {answer.reason}")
        return hosts_from_mx(domain, answer)

    async def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses; empty when there are none or no server answered."""
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer = await self.lookup(host, rdtype)
            if isinstance(answer, Answer):
                found.extend(r.address for r in answer.records)
        return found

    async def lookup(self, name: str | dns.name.Name, rdtype: int) -> Answer | Failure:
        """The answer for (name, type), following CNAMEs the server left for us, from cache if fresh."""
        qname = name if isinstance(name, dns.name.Name) else query_name(name)
        if qname is None:
            return Failure(f"{name!r} is not a valid domain name")
        for _ in range(MAX_CNAME_HOPS):
            answer = await self._cached_or_asked(qname, rdtype)
            if isinstance(answer, Failure) or answer.follow is None:
                return answer
            qname = answer.follow
        return Failure(f"CNAME chain longer than {MAX_CNAME_HOPS}")

    async def _cached_or_asked(self, qname: dns.name.Name, rdtype: int) -> Answer | Failure:
        key = (qname, rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = await self._ask(qname, rdtype)
        if isinstance(answer, Answer) and answer.ttl > 0:
            self._remember(key, answer, self._clock())
        return answer

    def _remember(self, key, answer: Answer, now: float) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= MAX_CACHE_ENTRIES:  # still full of live entries: drop the oldest
                del self._cache[next(iter(self._cache))]
        self._cache.pop(key, None)
        self._cache[key] = (now + answer.ttl, answer)

    def _candidates(self) -> list[_Server]:
        """Servers in order, without those that failed lately, unless every one did."""
        now = self._clock()
        healthy = [s for s in self._servers if s.avoid_until <= now]
        return healthy or list(self._servers)

    async def _ask(self, qname: dns.name.Name, rdtype: int) -> Answer | Failure:
        failure = Failure("no name servers configured")
        for server in self._candidates():
            server.lookups += 1
            answer = await self._ask_one(server, qname, rdtype)
            if self._observe is not None:
                self._observe(server.label, dns.rdatatype.to_text(rdtype), isinstance(answer, Answer))
            if isinstance(answer, Answer):
                return answer
            server.failures += 1
            server.avoid_until = self._clock() + self._avoid_failing_for
            failure = Failure(f"{server.label}: {answer.reason}")
        return failure

    async def _ask_one(self, server: _Server, qname: dns.name.Name, rdtype: int) -> Answer | Failure:
        query = dns.message.make_query(qname, rdtype)
        try:
            async with await _connected_udp(server) as sock:
                response = await dns.asyncquery.udp(query, where=server.address, port=server.port,
                                                    timeout=self._timeout, sock=sock)
            if response.flags & dns.flags.TC:  # too big for UDP: the same question over TCP
                response = await dns.asyncquery.tcp(query, where=server.address, port=server.port,
                                                    timeout=self._timeout)
        except dns.exception.Timeout:
            return Failure(f"no answer within {self._timeout:g}s")
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            return Failure(f"{type(exc).__name__}: {exc}".rstrip(": "))
        return interpret(response)


async def _connected_udp(server: _Server):
    """A UDP socket connected to the server, so a closed port is reported at once (ICMP port
    unreachable) instead of costing a whole timeout, as it would on dnspython's own socket."""
    af = dns.inet.af_for_address(server.address)
    backend = dns.asyncbackend.get_default_backend()
    return await backend.make_socket(af, socket.SOCK_DGRAM, 0, None, (server.address, server.port))
