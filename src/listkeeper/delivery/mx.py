"""Direct delivery: MX lookup with dnspython (RFC 5321 §5.1, RFC 7505), then SMTP to each host."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from listkeeper.manifests.routes import TlsMode

from .lifecycle import Event
from .transports import Result, SmtpConnection


async def mx_hosts(domain: str, resolver: dns.asyncresolver.Resolver) -> list[str] | Result:
    """Hosts in preference order; the domain itself when it has no MX; a final failure for a null MX."""
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        return Result(Event.permanent, f"550 5.1.2 domain {domain} does not exist")
    except dns.resolver.NoAnswer:
        return [domain]
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        return Result(Event.temporary, f"MX lookup for {domain} failed: {exc}")
    records = sorted(answer, key=lambda r: r.preference)
    if len(records) == 1 and str(records[0].exchange) == ".":
        return Result(Event.permanent, f"556 5.1.10 domain {domain} accepts no mail (null MX)")
    return [str(r.exchange).rstrip(".") for r in records if str(r.exchange) != "."]


async def connect_mx(domain: str, resolver, port: int, timeout: float, helo_name: str) -> SmtpConnection | Result:
    """A connection to the most preferred MX host of `domain` that answers."""
    hosts = await mx_hosts(domain, resolver)
    if isinstance(hosts, Result):
        return hosts
    last = Result(Event.temporary, f"no MX host of {domain} answered")
    for host in hosts:
        opened = await SmtpConnection.open(host, port, TlsMode.opportunistic, timeout=timeout,
                                           helo_name=helo_name, verify=False)
        if isinstance(opened, SmtpConnection):
            return opened
        last = opened
    return last
