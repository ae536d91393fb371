"""DKIM keys for tests, and verification against a real name server on loopback (never the internet)."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .dnsserver import ZoneServer


def new_key(path: Path, bits: int = 2048) -> str:
    """Writes a PEM private key to `path`; returns the public key as DKIM's p= value."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(public).decode("ascii")


def key_record(public: str) -> tuple:
    """The TXT record for SELECTOR._domainkey.DOMAIN, in strings of at most 255 octets."""
    text = f"v=DKIM1; k=rsa; p={public}"
    return ("TXT", *(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250)))


def dnsfunc_for(server: ZoneServer):
    """dkimpy's DNS hook, asking our loopback server with dnspython."""

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        query = dns.message.make_query(name.decode("ascii"), dns.rdatatype.TXT)
        response = dns.query.udp(query, server.address[0], port=server.port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(next(iter(rrset)).strings)
        return None
    return get_txt


def verifies(data: bytes, server: ZoneServer) -> bool:
    return dkim.verify(data, dnsfunc=dnsfunc_for(server))
