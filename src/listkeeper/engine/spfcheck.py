"""SPF (RFC 7208) on arrival: may the connecting client send mail for the MAIL FROM domain, or, for a
null sender, for the name it gave in HELO?

pyspf evaluates the record, with RFC 7208 4.6.4's limits (10 mechanisms and modifiers that ask DNS, 2
void lookups), in a worker thread of our own; each question it asks is put to our resolver (the
RoutingTable's name servers and cache, as for DKIM keys) on the event loop, so the loop never blocks
and no other name server is ever asked. A lookup that fails, or a check that runs past LIMIT seconds,
is temperror. Never raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass

import dns.rdatatype
import spf as pyspf

from listkeeper.delivery.resolver import Failure, MxResolver, query_name

from .authresults import SpfCheck

log = logging.getLogger("listkeeper.spf")

LIMIT = 20.0  # seconds for one whole check: RFC 7208 4.6.4's "at least 20 seconds"
WORKERS = 4
RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})
_WAIT_SLICE = 0.25

_bound = threading.local()  # the current check's way to ask our resolver, per worker thread


@dataclass(frozen=True)
class Arrival:
    """What the SMTP session knows of the post's sender."""

    client_ip: str
    mail_from: str  # the reverse path, "" for a null sender
    helo: str


def identity(arrival: Arrival) -> tuple[str, str]:
    """("mailfrom", its domain), or ("helo", the HELO name) for a null sender (RFC 7208 2.4)."""
    if arrival.mail_from:
        return "mailfrom", arrival.mail_from.rpartition("@")[2].strip().lower().rstrip(".")
    return "helo", arrival.helo.strip().lower().rstrip(".")


def _checkable(domain: str) -> bool:
    """A multi-label name with valid labels (RFC 7208 4.3: anything else is `none` without asking)."""
    return "." in domain and query_name(domain) is not None and all(0 < len(label) < 64 for label in domain.split("."))


def _lookup(name, qtype, strict=True, timeout=LIMIT):
    """pyspf's DNS hook: our resolver when a check of ours runs in this thread, no DNS at all otherwise."""
    ask = getattr(_bound, "ask", None)
    if ask is None:
        raise pyspf.TempError("DNS: no resolver configured for this check")
    return ask(str(name), qtype, timeout)


pyspf.DNSLookup = _lookup


def _value(record, qtype: str):
    """An answer record as pyspf's dnspython driver gives it."""
    if qtype in ("A", "AAAA"):
        return record.address
    if qtype == "MX":
        return record.preference, record.exchange.to_text(omit_final_dot=True)
    if qtype == "PTR":
        return record.target.to_text(omit_final_dot=True)
    return tuple(record.strings)  # TXT


def _asker(resolver: MxResolver, loop: asyncio.AbstractEventLoop):
    def ask(name: str, qtype: str, timeout: float):
        rdtype = dns.rdatatype.from_text(qtype)
        future = asyncio.run_coroutine_threadsafe(resolver.lookup(name, rdtype), loop)
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            try:
                answer = future.result(timeout=min(_WAIT_SLICE, max(deadline - time.monotonic(), 0)))
                break
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline or loop.is_closed() or not loop.is_running():
                    future.cancel()
                    raise pyspf.TempError(f"DNS: no answer for {name} {qtype} in time") from None
            except Exception as exc:  # noqa: BLE001 - the resolver's trouble is a temporary error
                raise pyspf.TempError(f"DNS: {type(exc).__name__}: {exc}") from None
        if isinstance(answer, Failure):
            raise pyspf.TempError(f"DNS: {answer.reason}")
        return [((name, qtype), _value(r, qtype)) for r in answer.records if r.rdtype == rdtype]

    return ask


def _evaluate(ask, arrival: Arrival, receiver: str) -> str:
    _bound.ask = ask
    try:
        query = pyspf.query(i=arrival.client_ip, s=arrival.mail_from, h=arrival.helo, receiver=receiver,
                            querytime=LIMIT)
        result = query.check()[0]
    finally:
        _bound.ask = None
    return result if result in RESULTS else "permerror"


class SpfChecker:
    """Runs checks in threads of its own, so slow name servers cannot take the loop's default workers."""

    def __init__(self) -> None:
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="spf")

    async def check(self, arrival: Arrival, resolver: MxResolver, receiver: str) -> SpfCheck | None:
        """The SPF result for the arrival; None when there is no client address to check."""
        try:
            client = str(ipaddress.ip_address(arrival.client_ip))
        except ValueError:
            return None
        kind, domain = identity(arrival)
        if not _checkable(domain):
            return SpfCheck("none", domain, kind)
        arrival = Arrival(client, arrival.mail_from, arrival.helo)
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(self._threads, _evaluate, _asker(resolver, loop), arrival, receiver), LIMIT + 5)
        except asyncio.TimeoutError:
            result = "temperror"
        except Exception:  # noqa: BLE001 - the post goes on, reported as a temporary error
            log.exception("spf: checking %s for %s failed", domain, client)
            result = "temperror"
        return SpfCheck(result, domain, kind)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
