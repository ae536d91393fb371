"""Direct delivery: the domain's MX hosts (RFC 5321 §5.1, RFC 7505), then SMTP to each address."""

from __future__ import annotations

from listkeeper import notify
from listkeeper.manifests.routes import TlsMode

from .lifecycle import Event
from .resolver import MxResolver
from .transports import Result, SmtpConnection

MAX_ADDRESSES = 5  # as Postfix's smtp_mx_address_limit: a dead domain costs at most five timeouts


async def mx_targets(domain: str, resolver: MxResolver) -> list[tuple[str, str]] | Result:
    """(host, address) pairs to try in order, at most MAX_ADDRESSES; an address shared by two hosts is tried once."""
    hosts = await resolver.mx_hosts(domain)
    if isinstance(hosts, Result):
        return hosts
    targets: dict[str, str] = {}
    for host in hosts:
        for address in await resolver.addresses(host):
            targets.setdefault(address, host)
    if not targets:
        return Result(Event.temporary, f"no address found for the MX hosts of {domain}: {', '.join(hosts)}")
    return [(host, address) for address, host in targets.items()][:MAX_ADDRESSES]


async def connect_mx(domain: str, resolver: MxResolver, port: int, timeout: float,
                     helo_name: str) -> SmtpConnection | Result:
    """A connection to the most preferred MX address of `domain` that answers.

    When none does, the last failure comes back as temporary even if it was a 5xx greeting:
    one host refusing us says nothing final about the domain (Postfix's smtp_skip_5xx_greeting)."""
    targets = await mx_targets(domain, resolver)
    if isinstance(targets, Result):  # no host to connect to: the domain itself is the server in question
        notify.emit("smtp.connection_failed", server=domain, port=port, tls=TlsMode.opportunistic.value, auth=False,
                    error=targets.detail, stage="dns")
        return targets
    last = Result(Event.temporary, f"no MX host of {domain} answered")
    for host, address in targets:
        opened = await SmtpConnection.open(address, port, TlsMode.opportunistic, timeout=timeout,
                                           helo_name=helo_name, verify=False, server_hostname=host)
        if isinstance(opened, SmtpConnection):
            return opened
        last = opened
    return Result(Event.temporary, last.detail)
