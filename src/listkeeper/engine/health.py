"""`/healthz`: the engine is healthy while its store answers and its SMTP listener greets a client.

Both are checked for real on every request: `SELECT 1` on the store, and a TCP connection to the SMTP
listener's own address that must be greeted with 220. The probe's connection is announced in `probes`
beforehand (by its local address), so it is neither counted as an SMTP session nor logged as one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from sqlalchemy import text

from listkeeper.store import Store

TIMEOUT = 5.0


def _select_one(store: Store) -> None:
    with store.engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()


# the store probe still running, by store: a probe that outlives its timeout (a hung server) is waited
# for again by the next request, never started a second time, so it holds one worker thread, not one each
_probing: dict[int, asyncio.Future] = {}


def _probe_ended(key: int, probe: asyncio.Future) -> None:
    if _probing.get(key) is probe:
        del _probing[key]
    if not probe.cancelled():
        probe.exception()  # retrieved: a probe that ended after its request gave up is not logged as lost


async def store_problem(store: Store) -> str | None:
    probe = _probing.get(id(store))
    if probe is None or probe.done() or probe.get_loop() is not asyncio.get_running_loop():
        probe = _probing[id(store)] = asyncio.ensure_future(asyncio.to_thread(_select_one, store))
        probe.add_done_callback(lambda done, key=id(store): _probe_ended(key, done))
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.shield(probe)
    except TimeoutError:
        return f"store: no answer within {TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"store: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def _target(address: tuple) -> tuple[str, int]:
    """Where to reach a listener bound to `address`: a wildcard address is reached on loopback."""
    host, port = address[0], address[1]
    ip = ipaddress.ip_address(host.split("%")[0])
    if ip.is_unspecified:
        host = "::1" if ip.version == 6 else "127.0.0.1"
    return host, port


async def smtp_problem(server: asyncio.base_events.Server | None, probes: set) -> str | None:
    if server is None or not server.is_serving() or not server.sockets:
        return "smtp: the listener is not serving"
    host, port = _target(server.sockets[0].getsockname())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    local = None
    try:
        sock.bind((host, 0))  # the local address is known before the listener sees the connection
        local = sock.getsockname()[:2]
        probes.add(local)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TIMEOUT):
            await loop.sock_connect(sock, (host, port))
            greeting = b""
            while not greeting.endswith(b"\n"):
                chunk = await loop.sock_recv(sock, 512)
                if not chunk:
                    break
                greeting += chunk
        if not greeting.startswith(b"220"):
            return f"smtp: {host}:{port} answered {greeting[:60]!r}, not 220"
        await loop.sock_sendall(sock, b"QUIT\r\n")
    except TimeoutError:
        return f"smtp: {host}:{port} did not greet within {TIMEOUT:g} s"
    except OSError as exc:
        return f"smtp: cannot connect to {host}:{port}: {exc.strerror or exc}"
    finally:
        sock.close()
        if local is not None:
            asyncio.get_running_loop().call_later(1.0, probes.discard, local)
    return None


async def problems(store: Store, server: Callable[[], "asyncio.base_events.Server | None"], probes: set) -> list[str]:
    found = await asyncio.gather(store_problem(store), smtp_problem(server(), probes))
    return [p for p in found if p]
