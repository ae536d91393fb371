"""A tiny authoritative name server on loopback (UDP and TCP, one port) for resolver tests.

Records come from a dict: {"example.test": [("MX", 10, "mx1.example.test")], "mx1.example.test":
[("A", "127.0.0.2")]}. Unknown names get NXDOMAIN, known names without the asked type get
NOERROR/NODATA, both with an SOA in the authority section. A name with a CNAME gets the CNAME
alone, never its target, so the client has to follow it. Per name (or "*" for all) it can
fail: "servfail" answers SERVFAIL, "drop" never answers. Names in `truncate` get an empty
truncated answer over UDP, so the client has to ask again over TCP.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

IN = dns.rdataclass.IN


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name.lower())


class ZoneServer:
    def __init__(self, records: dict[str, list[tuple]], ttl: int = 300, negative_ttl: int | None = None,
                 fail: dict[str, str] | None = None, truncate: set[str] | None = None):
        self.ttl = ttl
        self.negative_ttl = ttl if negative_ttl is None else negative_ttl
        self.records = {_absolute(name): list(rows) for name, rows in records.items()}
        self.fail = dict(fail or {})  # may be changed while running
        self.truncate = set(truncate or ())
        self.log: list[tuple[str, str, str]] = []  # (name, type, "udp" | "tcp") per question received
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._udp, self._tcp = _bind_pair()
        self.port: int = self._udp.getsockname()[1]
        self.address = ("127.0.0.1", self.port)

    @property
    def queries(self) -> int:
        return len(self.log)

    def count(self, name: str, rdtype: str | None = None) -> int:
        name = name.lower().rstrip(".")
        return sum(1 for n, t, _ in self.log if n == name and rdtype in (None, t))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "ZoneServer":
        self._thread = threading.Thread(target=self._serve, name=f"zoneserver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> "ZoneServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, "udp")
            selector.register(self._tcp, selectors.EVENT_READ, "tcp")
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    try:
                        self._udp_once() if key.data == "udp" else self._tcp_once()
                    except OSError:
                        pass  # a client that went away must not stop the server

    def _udp_once(self) -> None:
        wire, peer = self._udp.recvfrom(65535)
        reply = self._reply(wire, "udp")
        if reply is not None:
            self._udp.sendto(reply, peer)

    def _tcp_once(self) -> None:
        conn, _ = self._tcp.accept()
        with conn:
            conn.settimeout(2)
            (length,) = struct.unpack("!H", _recv_exact(conn, 2))
            reply = self._reply(_recv_exact(conn, length), "tcp")
            if reply is not None:
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def _reply(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
            question = query.question[0]
        except Exception:  # noqa: BLE001 - garbage in, no answer out
            return None
        text = question.name.to_text(omit_final_dot=True).lower()
        self.log.append((text, dns.rdatatype.to_text(question.rdtype), transport))
        mode = self.fail.get(text, self.fail.get("*"))
        if mode == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif transport == "udp" and text in self.truncate:
            response.flags |= dns.flags.TC
        else:
            self._answer(response, question.name, question.rdtype)
        return response.to_wire(want_shuffle=False)  # answer order is part of what tests check

    def _answer(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> None:
        rows = self.records.get(qname)
        if rows is None and not any(name.is_subdomain(qname) for name in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(qname))
            return
        aliases = [row for row in rows or () if row[0] == "CNAME"]
        if aliases and rdtype != dns.rdatatype.CNAME:
            rdtype = dns.rdatatype.CNAME  # the alias alone, as for a target in another zone
        matching = [row for row in rows or () if dns.rdatatype.from_text(row[0]) == rdtype]
        if not matching:
            response.authority.append(self._soa(qname))  # NODATA
            return
        rrset = dns.rrset.RRset(qname, IN, rdtype)
        rrset.update_ttl(self.ttl)
        for row in matching:
            text = " ".join(str(part) for part in row[1:])
            rrset.add(dns.rdata.from_text(IN, rdtype, text, origin=dns.name.root, relativize=False))
        response.answer.append(rrset)

    def _soa(self, qname: dns.name.Name) -> dns.rrset.RRset:
        """Owned by the name's top-level domain, which the resolver finds by walking up."""
        zone = dns.name.Name(qname.labels[-2:]) if len(qname.labels) >= 2 else dns.name.root
        soa = dns.rrset.from_text(zone, self.negative_ttl, IN, "SOA",
                                  f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {self.negative_ttl}")
        return soa


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed the connection")
        data += chunk
    return data


def _bind_pair(attempts: int = 20) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port of 127.0.0.1."""
    for _ in range(attempts):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(8)
        return udp, tcp
    raise RuntimeError("no free port for both UDP and TCP on 127.0.0.1")


def closed_udp_port() -> int:
    """A UDP port nobody listens on: queries to it are refused at once (ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
