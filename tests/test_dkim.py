"""DKIM signing: every copy leaving the engine is signed by its domain's key, after the last header change,
and the signatures verify with dkimpy against the key a real name server on loopback publishes."""

from __future__ import annotations

import re
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

import pytest
from dkim.util import parse_tag_value

from listkeeper.delivery.signing import Signing, signing_domain, header_fields
from listkeeper.engine.snapshot import Snapshot
from listkeeper.manifests.domains import DomainSpec

from .conftest import REPO, pickup_routes, wait_for, write
from .dkimkeys import key_record, new_key, verifies
from .dnsserver import ZoneServer
from .test_serve import LISTS, message, outbox, send


def domain_yaml(key_file: Path, selector: str = "lk2024", extra: str = "") -> str:
    return f"""
apiVersion: listkeeper/v1
kind: Domain
metadata: {{name: example-org}}
spec:
  domain: example.org
  hostname: lists.example.org
  postmaster: postmaster@example.org
  web_base_url: https://lists.example.org
  dkim:
    selector: {selector}
    key: {{file: {key_file}}}
{extra}"""


@pytest.fixture
def key(tmp_path: Path):
    """(key file, the name server publishing its public half)."""
    path = tmp_path / "keys" / "example.org.pem"
    public = new_key(path)
    with ZoneServer({"lk2024._domainkey.example.org": [key_record(public)]}) as server:
        yield path, server


@pytest.fixture
def conf(tmp_path: Path, key) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", domain_yaml(key[0]))
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def signature_tags(data: bytes) -> dict[bytes, bytes]:
    field = message_from_bytes(data)["DKIM-Signature"]
    return parse_tag_value(re.sub(r"\s+", " ", field).encode())


async def test_every_copy_of_a_post_is_signed_after_its_own_unsubscribe_link(tmp_path, conf, key, engine_for):
    engine = await engine_for(conf)
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("Alice <alice@example.org>", "members@example.org", "Signed"))
    await wait_for(lambda: len(outbox(tmp_path)) == 4)
    links = set()
    for path in outbox(tmp_path):
        data = path.read_bytes()
        assert verifies(data, key[1]), path.name
        tags = signature_tags(data)
        assert (tags[b"d"], tags[b"s"], tags[b"c"], tags[b"a"]) == (
            b"example.org", b"lk2024", b"relaxed/simple", b"rsa-sha256")
        signed = tags[b"h"].replace(b" ", b"").split(b":")
        for name in (b"from", b"to", b"subject", b"date", b"message-id", b"list-id", b"list-unsubscribe",
                     b"list-unsubscribe-post"):
            assert signed.count(name) >= 2 or name == b"date", name  # present once, and oversigned
        field = re.search(rb"DKIM-Signature:.*?\r\n(?=\S)", data, re.S).group(0)
        assert all(len(line) <= 78 for line in field.split(b"\r\n"))
        links.add(message_from_bytes(data)["List-Unsubscribe"])
        # a changed link (or any signed field) no longer verifies
        tampered = re.sub(rb"/unsubscribe/[\w-]+", b"/unsubscribe/forged", data, count=1)
        assert tampered != data and not verifies(tampered, key[1])
    assert len(links) == 4  # each recipient's own link is what was signed
    assert key[1].count("lk2024._domainkey.example.org", "TXT") >= 8  # really asked, twice per copy


async def test_replies_and_notices_of_the_domain_are_signed_too(tmp_path, conf, key, engine_for):
    engine = await engine_for(conf)
    await send(engine.port, "alice@example.org", ["members-request@example.org"],
               message("alice@example.org", "members-request@example.org", "help"))
    await send(engine.port, "alice@example.org", ["club@example.org"],
               message("alice@example.org", "club@example.org", "Please approve"))
    await wait_for(lambda: len(outbox(tmp_path)) == 2)
    for path in outbox(tmp_path):
        data = path.read_bytes()
        assert "@example.org" in message_from_bytes(data)["From"]  # members-request@, members-confirm+...@
        assert verifies(data, key[1]), data[:400]


async def test_a_domain_without_a_key_sends_unsigned(tmp_path, engine_for):
    from .conftest import DOMAIN
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    engine = await engine_for(folder)
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("alice@example.org", "members@example.org", "Plain"))
    await wait_for(lambda: len(outbox(tmp_path)) == 4)
    assert all(b"DKIM-Signature" not in p.read_bytes() for p in outbox(tmp_path))


# --- which key signs (pure) ---------------------------------------------------------------------------

@pytest.mark.parametrize("from_, return_path, expected", [
    ("Alice <alice@example.org>", "", "example.org"),
    ("MAILER-DAEMON@lists.example.org", "", "example.org"),  # a parent domain's key (relaxed alignment)
    ("poster@gmail.test", "members-bounces+x=y@example.org", "example.org"),  # a post: the list's domain
    ("poster@gmail.test", "someone@elsewhere.test", None),  # a forward of foreign mail: not ours to sign
    ("x@other.test", "", "other.test"),
    ("x@sub.other.test", "", "other.test"),
    ("x@notother.test", "", None),
])
def test_the_signing_domain(from_, return_path, expected):
    fields = header_fields(f"From: {from_}\r\nSubject: x".encode())
    assert signing_domain(fields, return_path, {"example.org": 1, "other.test": 2}) == expected


def test_a_message_with_an_unreadable_header_goes_out_unsigned(tmp_path, key):
    spec = DomainSpec.model_validate({"domain": "example.org", "hostname": "lists.example.org",
                                      "postmaster": "postmaster@example.org",
                                      "dkim": {"selector": "lk2024", "key": {"file": str(key[0])}}})
    snapshot = Snapshot(1, {"example.org": spec}, {}, (), {})
    signing = Signing()
    good = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    signed = signing.sign(good, "", snapshot, 1_700_000_000)
    assert signed.startswith(b"DKIM-Signature: v=1;") and signed.endswith(good) and verifies(signed, key[1])
    assert b"t=1700000000;" in signed
    odd = b"From: a@example.org\r\nno colon here\r\n\r\nbody\r\n"
    assert signing.sign(odd, "", snapshot, 1_700_000_000) == odd


def test_lf_only_messages_are_signed_as_they_travel(key):
    spec = DomainSpec.model_validate({"domain": "example.org", "hostname": "lists.example.org",
                                      "postmaster": "postmaster@example.org",
                                      "dkim": {"selector": "lk2024", "key": {"file": str(key[0])}}})
    snapshot = Snapshot(1, {"example.org": spec}, {}, (), {})
    data = b"From: a@example.org\nSubject: s\n\nline one\nline two\n\n\n"
    signed = Signing().sign(data, "", snapshot, 1_700_000_000)
    assert b"\r\n" not in signed and verifies(signed.replace(b"\n", b"\r\n"), key[1])


# --- validation -------------------------------------------------------------------------------------

def validate(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listkeeper", "validate", str(folder)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read the DKIM key from file {path}: No such file or directory"),
    ("not a key at all\n", "the DKIM key in file {path} is not an unencrypted PEM private key"),
    ("-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
     "the DKIM key in file {path} is not an unencrypted PEM private key"),
])
def test_validate_names_the_line_of_a_key_that_cannot_be_used(tmp_path, content, expected):
    path = tmp_path / "keys" / "bad.pem"
    if content is not None:
        write(path.parent, path.name, content)
    folder = tmp_path / "conf"
    domain = write(folder, "domain.yaml", domain_yaml(path))
    result = validate(folder)
    assert result.returncode == 1
    line = next(i for i, text in enumerate(domain.read_text().splitlines(), 1) if text.strip().startswith("key:"))
    assert f"{domain}:{line}:" in result.stderr + result.stdout
    assert "spec.dkim.key" in result.stderr + result.stdout
    assert expected.format(path=path) in result.stderr + result.stdout
    for secret in (content or "").splitlines():  # what the file holds is never shown
        assert secret.startswith("-----") or secret not in result.stderr + result.stdout


def test_validate_refuses_unsignable_headers(tmp_path):
    folder = tmp_path / "conf"
    good = tmp_path / "keys" / "good.pem"
    new_key(good)
    write(folder, "domain.yaml", domain_yaml(good, extra="    headers: [subject, received]\n"))
    result = validate(folder)
    assert result.returncode == 1
    out = result.stderr + result.stdout
    assert "From must be signed" in out
    write(folder, "domain.yaml", domain_yaml(good, extra="    headers: [from, received]\n"))
    out = validate(folder).stderr
    assert "received must not be signed" in out


def test_validate_accepts_a_good_key(tmp_path):
    good = tmp_path / "keys" / "good.pem"
    new_key(good)
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", domain_yaml(good))
    result = validate(folder)
    assert result.returncode == 0, result.stderr
    assert "valid: 1 Domain" in result.stdout
