"""DKIM private keys: read from their secret reference and parsed once, with errors an operator can act on.

Shared by validation (a key that cannot be read or parsed is an error at file:line) and by delivery,
which keeps the parsed key for as long as the configuration stays the same.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .common import SecretRef

MIN_BITS = 1024  # receivers ignore shorter keys (RFC 8301)


class KeyProblem(ValueError):
    """Why a key cannot be used; never contains the key itself."""


def load_dkim_key(secret: SecretRef) -> rsa.RSAPrivateKey:
    where = secret.where()
    try:
        text = secret.read("the DKIM key")
    except ValueError as exc:
        raise KeyProblem(str(exc)) from None
    try:
        key = load_pem_private_key(text.encode("ascii", "replace"), password=None)
    except (ValueError, TypeError):  # the library's message may quote the input: say it in our words
        raise KeyProblem(f"the DKIM key in {where} is not an unencrypted PEM private key "
                         "(PKCS#1 'BEGIN RSA PRIVATE KEY' or PKCS#8 'BEGIN PRIVATE KEY')") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyProblem(f"the DKIM key in {where} is not an RSA key (rsa-sha256 is what receivers verify)")
    if key.key_size < MIN_BITS:
        raise KeyProblem(f"the DKIM key in {where} has {key.key_size} bits; receivers need at least "
                         f"{MIN_BITS} (2048 recommended)")
    return key


def dkim_key_problem(secret: SecretRef) -> str | None:
    try:
        load_dkim_key(secret)
    except KeyProblem as exc:
        return str(exc)
    return None
