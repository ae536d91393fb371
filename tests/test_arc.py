"""ARC (RFC 8617): a list that changes a post seals each copy, so receivers can trust the authentication the
post had on arrival. The poster's DKIM key, the list's key and the DMARC records come from a real name
server on loopback; the engine checks the post through it, delivers to a pickup folder, and dkimpy's
arc_verify, asking the same server, judges each copy. Pure parts first."""

from __future__ import annotations

import re
from email import message_from_bytes
from pathlib import Path

import dkim
import pytest

from listkeeper.delivery import arc
from listkeeper.delivery.signing import Signing
from listkeeper.engine.authresults import (DkimCheck, InboundAuth, aligned, dmarc_result, field_value,
                                           without_forged)
from listkeeper.engine.headers import RawMessage
from listkeeper.engine.snapshot import Snapshot
from listkeeper.manifests.domains import DomainSpec

from .conftest import wait_for, write
from .dkimkeys import dnsfunc_for, key_record, new_key
from .dnsserver import ZoneServer
from .test_dkim import domain_yaml
from .test_dmarc import copies, post, routes, send, signed_post

# --- pure ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("lists.example.org; dkim=pass header.d=x.test", "lists.example.org"),
    ("Lists.Example.ORG 1; none", "lists.example.org"),  # with a version
    ("(comment) lists.example.org (more);\r\n dkim=pass", "lists.example.org"),
    ("lists.example.org", "lists.example.org"),
    ("", ""),
])
def test_the_authserv_id_of_a_field(value, expected):
    assert arc.authserv_id(value) == expected


def test_only_fields_claiming_our_id_are_removed():
    data = (b"Authentication-Results: mx.strict.test; spf=pass\r\n"
            b"Authentication-Results: LISTS.example.org;\r\n dkim=pass header.d=bank.test\r\n"
            b"From: a@strict.test\r\nSubject: s\r\n\r\nbody\r\n")
    message = RawMessage.parse(data)
    out = without_forged(message, frozenset({"lists.example.org"}))
    assert out.get_all("authentication-results") == ["mx.strict.test; spf=pass"]
    assert out.body == message.body and out.get("subject") == "s"
    untouched = RawMessage.parse(b"From: a@strict.test\r\n\r\nbody\r\n")
    assert without_forged(untouched, frozenset({"lists.example.org"})) is untouched


@pytest.mark.parametrize("signer, author, organisation, strict, expected", [
    ("strict.test", "strict.test", "strict.test", False, True),
    ("mail.strict.test", "strict.test", "strict.test", False, True),  # relaxed: same organisation
    ("strict.test", "news.strict.test", "strict.test", False, True),
    ("mail.strict.test", "strict.test", "strict.test", True, False),  # adkim=s
    ("other.test", "strict.test", "strict.test", False, False),
    ("a.corp.test", "b.corp.test", "corp.test", False, True),  # the record was found on the parent
    ("a.co.test", "b.co.test", "b.co.test", False, False),  # siblings, record on the author's own name
])
def test_alignment(signer, author, organisation, strict, expected):
    assert aligned(signer, author, organisation, strict) is expected


def test_dmarc_rests_on_an_aligned_signature_that_verified():
    record = ("strict.test", {"p": "reject"})
    good, foreign = DkimCheck("pass", "strict.test", "sel"), DkimCheck("pass", "mailer.test", "k")
    assert dmarc_result("strict.test", (foreign, good), record) == "pass"
    assert dmarc_result("strict.test", (foreign,), record) == "fail"
    assert dmarc_result("strict.test", (DkimCheck("fail", "strict.test", "sel"),), record) == "fail"
    assert dmarc_result("strict.test", (DkimCheck("temperror", "strict.test", "sel"), foreign), record) == "temperror"
    assert dmarc_result("strict.test", (), None) == "none"


def test_the_field_says_what_was_checked():
    auth = InboundAuth((DkimCheck("pass", "strict.test", "sel", "AbCdEfGh"),), "pass", "reject", "strict.test", "none")
    assert field_value(auth, "lists.example.org") == (
        "lists.example.org; dkim=pass header.d=strict.test header.s=sel header.b=AbCdEfGh; "
        "dmarc=pass (p=reject) header.from=strict.test; arc=none")
    assert field_value(InboundAuth(), "h.test") == "h.test; dkim=none; dmarc=none; arc=none"


@pytest.mark.parametrize("previous, results, expected", [
    (0, b"h; dkim=pass; arc=none", b"none"),
    (1, b"h; dkim=pass; arc=pass", b"pass"),
    (1, b"h; dkim=pass; arc=fail", b"fail"),
    (2, b"h; dkim=pass", b"fail"),  # a chain we did not see verify is not vouched for
    (1, b'h; dmarc=fail header.from="[x;arc=pass]"; arc=fail', b"fail"),  # our own arc= is the last
])
def test_the_chain_status_of_a_new_set(previous, results, expected):
    assert arc.chain_status(previous, results) == expected


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(poster's PEM, our key file, upstream forwarder's PEM, the name server publishing all three and the
    DMARC records)."""
    folder = tmp_path_factory.mktemp("arc")
    poster, ours, forwarder = (new_key(folder / f"{n}.pem") for n in ("strict", "example.org", "forwarder"))
    zone = {
        "sel._domainkey.strict.test": [key_record(poster)],
        "lk2024._domainkey.example.org": [key_record(ours)],
        "fw._domainkey.forwarder.test": [key_record(forwarder)],
        "_dmarc.strict.test": [("TXT", '"v=DMARC1; p=reject"')],
        "_dmarc.example.org": [("TXT", '"v=DMARC1; p=reject"')],
    }
    with ZoneServer(zone, ttl=300) as server:
        yield ((folder / "strict.pem").read_bytes(), folder / "example.org.pem",
               (folder / "forwarder.pem").read_bytes(), server)


def snapshot_for(key_file: Path, seal: bool = True) -> Snapshot:
    spec = DomainSpec.model_validate({"domain": "example.org", "hostname": "lists.example.org",
                                      "postmaster": "postmaster@example.org",
                                      "dkim": {"selector": "lk2024", "key": {"file": str(key_file)}, "arc": seal}})
    return Snapshot(1, {"example.org": spec}, {}, (), {})


OURS = b"Authentication-Results: lists.example.org; dkim=pass header.d=strict.test header.s=sel; arc=none\n"


def test_an_lf_only_copy_is_sealed_with_its_own_line_ends(keys):
    data = OURS + b"From: a@strict.test\nSubject: [talk] s\nList-Id: <talk.example.org>\n\nline one\nline two\n"
    sealed = Signing().sign(data, "talk-bounces@example.org", snapshot_for(keys[1]), 1_700_000_000)
    assert b"\r\n" not in sealed and sealed.endswith(data)
    cv, results, reason = dkim.arc_verify(sealed.replace(b"\n", b"\r\n"), dnsfunc=dnsfunc_for(keys[3]))
    assert cv == dkim.CV_Pass, reason
    assert results[0]["aar-value"].startswith(b"i=1; lists.example.org; dkim=pass header.d=strict.test")


def test_mail_without_our_results_and_keys_without_arc_are_not_sealed(keys):
    plain = b"From: MAILER-DAEMON@example.org\r\nSubject: report\r\n\r\nbody\r\n"
    assert b"ARC-" not in Signing().sign(plain, "", snapshot_for(keys[1]), 1_700_000_000)
    post_ = OURS.replace(b"\n", b"\r\n") + plain
    assert b"ARC-" not in Signing().sign(post_, "", snapshot_for(keys[1], seal=False), 1_700_000_000)
    sealed = Signing().sign(post_, "", snapshot_for(keys[1]), 1_700_000_000)
    assert sealed.count(b"ARC-Seal: i=1; cv=none;") == 1 and dkim.verify(sealed, dnsfunc=dnsfunc_for(keys[3]))


def test_no_set_beyond_the_fiftieth(keys):
    sets = b"".join(b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=x.test; s=s; b=AAAA\r\n" % i for i in range(50, 0, -1))
    data = OURS.replace(b"arc=none", b"arc=pass").replace(b"\n", b"\r\n") + sets + b"From: a@strict.test\r\n\r\nx\r\n"
    assert b"i=51" not in Signing().sign(data, "", snapshot_for(keys[1]), 1_700_000_000)


# --- end to end: the engine, a real name server -------------------------------------------------------

LISTS = """
apiVersion: listkeeper/v1
kind: MailingList
metadata: {name: talk}
spec:
  address: talk@example.org
  type: discussion
  subject_prefix: "[talk]"
  dmarc: munge
  subscribers:
    - address: alice@strict.test
    - address: bob@soft.test
    - address: chair@example.org
"""


def configure(tmp_path: Path, keys, seal: bool = True) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", domain_yaml(keys[1], extra="    arc: true\n" if seal else ""))
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", routes(tmp_path / "outbox", keys[3]))
    keys[3].log.clear()
    return folder


FORGED = ("Authentication-Results: lists.example.org; dkim=pass header.d=bank.test\r\n"
          "Authentication-Results: mx.strict.test; spf=pass smtp.mailfrom=strict.test\r\n")


def field_values(data: bytes, name: str) -> list[str]:
    return [re.sub(r"\s+", " ", v) for v in message_from_bytes(data).get_all(name, [])]


async def test_a_changed_post_is_sealed_with_the_results_it_had_on_arrival(tmp_path, keys, engine_for):
    engine = await engine_for(configure(tmp_path, keys))
    zone = keys[3]
    original = signed_post(keys[0], subject="Sealed")
    await send(engine.port, "alice@strict.test", "talk@example.org", FORGED.encode() + original)
    delivered = await wait_for(lambda: len(copies(tmp_path, "Sealed")) == 3 and copies(tmp_path, "Sealed"))
    links, seals = set(), set()
    for data in delivered:
        mail = message_from_bytes(data)
        assert mail["Subject"] == "[talk] Sealed" and mail["From"] == '"Alice via talk" <talk@example.org>'
        assert not dkim.verify(original.replace(b"Subject: Sealed", b"Subject: [talk] Sealed"),
                               dnsfunc=dnsfunc_for(zone))  # the list broke the poster's signature ...
        cv, results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc_for(zone))
        assert cv == dkim.CV_Pass, reason  # ... and vouches for it instead
        assert [r["instance"] for r in results] == [1] and results[0]["as-domain"] == b"example.org"
        aar = results[0]["aar-value"].decode()
        assert "lists.example.org; dkim=pass header.d=strict.test header.s=sel" in re.sub(r"\s+", " ", aar)
        assert "dmarc=pass (p=reject) header.from=strict.test" in re.sub(r"\s+", " ", aar)
        assert "arc=none" in aar and "bank.test" not in aar
        assert re.search(r"^ARC-Seal: i=1; cv=none;", data.decode(), re.M)
        assert dkim.verify(data, dnsfunc=dnsfunc_for(zone))  # our own DKIM signature, on top
        results_fields = field_values(data, "Authentication-Results")
        assert [v for v in results_fields if v.startswith("lists.example.org")] == [
            "lists.example.org; dkim=pass header.d=strict.test header.s=sel header.b="
            + re.search(r"header\.b=(\S+);", results_fields[0]).group(1)
            + "; spf=none smtp.mailfrom=strict.test; dmarc=pass (p=reject) header.from=strict.test; arc=none"]
        assert not any("bank.test" in v for v in results_fields)  # the forgery is gone
        assert "mx.strict.test; spf=pass smtp.mailfrom=strict.test" in results_fields  # another's stays
        links.add(mail["List-Unsubscribe"])
        seals.add(mail["ARC-Seal"])
        signed = re.search(r"h=([^;]*);", re.sub(r"\s+", "", mail["ARC-Message-Signature"])).group(1).split(":")
        assert "subject" in signed and "from" in signed and "list-unsubscribe" not in signed
    assert len(links) == 3  # each copy has its own unsubscribe link, which the list's DKIM signature covers ...
    assert len(seals) == 1  # ... and all share one ARC set: two RSA signatures per post, not per copy
    assert zone.count("sel._domainkey.strict.test", "TXT") >= 1  # the poster's key, asked by the engine


async def test_a_post_that_fails_is_sealed_as_failing(tmp_path, keys, engine_for):
    engine = await engine_for(configure(tmp_path, keys))
    tampered = signed_post(keys[0], subject="Tampered").replace(b"Hello list.", b"Hello LIST.")
    await send(engine.port, "alice@strict.test", "talk@example.org", tampered)
    await send(engine.port, "alice@strict.test", "talk@example.org", post("alice@strict.test", "Unsigned"))
    for subject, dkim_result in (("Tampered", "dkim=fail header.d=strict.test"), ("Unsigned", "dkim=none")):
        delivered = await wait_for(lambda: len(copies(tmp_path, subject)) == 3 and copies(tmp_path, subject))
        for data in delivered:
            cv, results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc_for(keys[3]))
            aar = re.sub(r"\s+", " ", results[0]["aar-value"].decode())
            assert cv == dkim.CV_Pass and dkim_result in aar and "dmarc=fail" in aar, (subject, aar)


async def test_an_inbound_chain_is_continued(tmp_path, keys, engine_for):
    """A forwarder (dkimpy's own arc_sign) sealed the post before it reached the list: i=2, cv=pass; a
    chain broken on the way gets cv=fail."""
    engine = await engine_for(configure(tmp_path, keys))
    for subject in ("Forwarded", "Broken"):
        upstream = (b"Authentication-Results: fwd.forwarder.test; dkim=pass header.d=strict.test\r\n"
                    + signed_post(keys[0], subject=subject))
        sealed = b"".join(dkim.arc_sign(upstream, b"fw", b"forwarder.test", keys[2], b"fwd.forwarder.test")) + upstream
        if subject == "Broken":
            sealed = sealed.replace(b"To: talk@example.org", b"To: talk@example.org, x@strict.test")
        await send(engine.port, "alice@strict.test", "talk@example.org", sealed)
    forwarded = await wait_for(lambda: len(copies(tmp_path, "Forwarded")) == 3 and copies(tmp_path, "Forwarded"))
    for data in forwarded:
        cv, results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc_for(keys[3]))
        assert cv == dkim.CV_Pass, reason
        assert [(r["instance"], r["as-domain"]) for r in results] == [(2, b"example.org"), (1, b"forwarder.test")]
        assert results[0]["cv"] == b"pass" and b"arc=pass" in results[0]["aar-value"]
    broken = await wait_for(lambda: len(copies(tmp_path, "Broken")) == 3 and copies(tmp_path, "Broken"))
    for data in broken:
        assert re.search(r"^ARC-Seal: i=2; cv=fail;", data.decode(), re.M)
        assert dkim.arc_verify(data, dnsfunc=dnsfunc_for(keys[3]))[0] != dkim.CV_Pass


async def test_without_arc_copies_carry_no_arc_set_and_no_results_of_ours(tmp_path, keys, engine_for):
    engine = await engine_for(configure(tmp_path, keys, seal=False))
    await send(engine.port, "alice@strict.test", "talk@example.org",
               FORGED.encode() + signed_post(keys[0], subject="Unsealed"))
    delivered = await wait_for(lambda: len(copies(tmp_path, "Unsealed")) == 3 and copies(tmp_path, "Unsealed"))
    for data in delivered:
        assert b"ARC-" not in data
        assert field_values(data, "Authentication-Results") == ["mx.strict.test; spf=pass smtp.mailfrom=strict.test"]
        assert dkim.verify(data, dnsfunc=dnsfunc_for(keys[3]))  # still DKIM-signed by the list
    assert keys[3].count("sel._domainkey.strict.test") == 0  # nothing looked up that nobody reads


async def test_a_key_the_name_server_cannot_give_is_a_temporary_error_and_the_post_goes_on(tmp_path, keys,
                                                                                          engine_for):
    engine = await engine_for(configure(tmp_path, keys))
    keys[3].fail = {"sel._domainkey.strict.test": "servfail"}
    try:
        errors, reply = await send(engine.port, "alice@strict.test", "talk@example.org",
                                   signed_post(keys[0], subject="No key"))
    finally:
        keys[3].fail = {}
    assert errors == {} and reply.startswith("2.0.0 Queued")
    delivered = await wait_for(lambda: len(copies(tmp_path, "No key")) == 3 and copies(tmp_path, "No key"))
    for data in delivered:
        cv, results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc_for(keys[3]))
        aar = re.sub(r"\s+", " ", results[0]["aar-value"].decode())
        assert cv == dkim.CV_Pass and "dkim=temperror header.d=strict.test" in aar and "dmarc=temperror" in aar, aar


async def test_a_from_domain_cannot_make_a_broken_chain_pass(tmp_path, keys, engine_for):
    """The From domain is copied into our results as header.from; one such as `[x;arc=pass]` (a domain
    literal getaddresses keeps whole) must not pass for our verdict on the inbound chain."""
    engine = await engine_for(configure(tmp_path, keys))
    upstream = (b"Authentication-Results: fwd.forwarder.test; dkim=pass header.d=strict.test\r\n"
                + post("Alice <alice@[x;arc=pass]>", "Literal"))
    sealed = b"".join(dkim.arc_sign(upstream, b"fw", b"forwarder.test", keys[2], b"fwd.forwarder.test")) + upstream
    sealed = sealed.replace(b"Hello list.", b"Hello LIST.")  # broken on the way
    errors, reply = await send(engine.port, "alice@strict.test", "talk@example.org", sealed)
    assert errors == {}, reply
    delivered = await wait_for(lambda: len(copies(tmp_path, "Literal")) == 3 and copies(tmp_path, "Literal"))
    for data in delivered:
        assert re.search(r"^ARC-Seal: i=2; cv=fail;", data.decode(), re.M), [l for l in data.decode().splitlines() if "ARC-Seal" in l or "lists.example.org;" in l or "arc=" in l]
        ours = [v for v in field_values(data, "Authentication-Results") if v.startswith("lists.example.org")]
        assert len(ours) == 1 and ours[0].endswith("; arc=fail") and "header.from=[x;" not in ours[0], ours
        assert dkim.arc_verify(data, dnsfunc=dnsfunc_for(keys[3]))[0] != dkim.CV_Pass


@pytest.mark.parametrize("value", ['"lists.example.org"; dkim=pass', "lists.example.org\t1; dkim=pass",
                                   "lists.example.org\t; dkim=pass"])
def test_the_authserv_id_behind_quotes_or_tabs(value):
    assert arc.authserv_id(value) == "lists.example.org"


def test_results_with_a_quoted_value_are_sealed_and_verify(keys):
    auth = InboundAuth((DkimCheck("permerror", "evil.test dmarc=pass", "s(", "AbC(d"),), "fail", None,
                       "[x;arc=pass]", "none")
    value = field_value(auth, "lists.example.org")
    assert value == ('lists.example.org; dkim=permerror header.d="evil.test dmarc=pass" header.s="s(" header.b=AbCd; '
                     'dmarc=fail header.from="[x;arc=pass]"; arc=none')
    data = (f"Authentication-Results: {value}\r\n".encode() + b"From: a@strict.test\r\nSubject: q\r\n\r\nbody\r\n")
    sealed = Signing().sign(data, "talk-bounces@example.org", snapshot_for(keys[1]), 1_700_000_000)
    cv, results, reason = dkim.arc_verify(sealed, dnsfunc=dnsfunc_for(keys[3]))
    assert cv == dkim.CV_Pass, reason
    assert re.sub(rb"\s+", b" ", results[0]["aar-value"]).strip() == b"i=1; " + value.encode()


def test_copies_that_differ_in_what_the_set_signs_get_sets_of_their_own(keys):
    """One Signing (one Sealer) for every copy, as delivery has: a personal body, a changed To or a seven-bit
    copy is a new set; only the per-recipient unsubscribe fields may differ under a reused one."""
    signing, snapshot = Signing(), snapshot_for(keys[1])
    head = OURS.replace(b"\n", b"\r\n") + b"From: a@strict.test\r\nTo: talk@example.org\r\nSubject: s\r\n"
    copies_ = {
        "base": head + b"List-Unsubscribe: <https://l.test/u/1>\r\n\r\nHello\r\n",
        "other link": head + b"List-Unsubscribe: <https://l.test/u/2>\r\n\r\nHello\r\n",
        "personal body": head + b"List-Unsubscribe: <https://l.test/u/3>\r\n\r\nHello Bob\r\n",
        "other to": head.replace(b"To: talk", b"To: bob") + b"\r\nHello\r\n",
    }
    sets = {}
    for name, data in copies_.items():
        sealed = signing.sign(data, "talk-bounces@example.org", snapshot, 1_700_000_000)
        cv, _, reason = dkim.arc_verify(sealed, dnsfunc=dnsfunc_for(keys[3]))
        assert cv == dkim.CV_Pass, (name, reason)
        sets[name] = re.search(rb"^ARC-Seal:.*?(?=^\S)", sealed, re.M | re.S).group(0)
    assert sets["base"] == sets["other link"]
    assert len({sets["base"], sets["personal body"], sets["other to"]}) == 3


@pytest.mark.parametrize("authors", [b"From: Alice <alice@strict.test>, CEO <ceo@bank.test>\r\n",
                                     b"From: Alice <alice@strict.test>\r\nFrom: CEO <ceo@bank.test>\r\n"])
async def test_a_post_with_authors_of_two_domains_does_not_pass_dmarc(tmp_path, keys, engine_for, authors):
    """DMARC (RFC 7489 6.6.1) has no verdict for a message from two domains: the signature of the first must
    not make the list vouch (dmarc=pass, sealed) for a post that readers may see as from the second."""
    engine = await engine_for(configure(tmp_path, keys))
    data = (authors + b"To: talk@example.org\r\nSubject: Two authors\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
            b"Message-ID: <two@poster.test>\r\n\r\nHello list.\r\n")
    signed = dkim.sign(data, b"sel", b"strict.test", keys[0], include_headers=[b"from", b"to", b"subject"]) + data
    errors, reply = await send(engine.port, "alice@strict.test", "talk@example.org", signed)
    assert errors == {}, reply
    delivered = await wait_for(lambda: copies(tmp_path, "Two authors"))
    ours = [v for v in field_values(delivered[0], "Authentication-Results") if v.startswith("lists.example.org")]
    assert len(ours) == 1 and "header.d=strict.test" in ours[0], ours
    assert "dmarc=permerror" in ours[0] and "dmarc=pass" not in ours[0], ours
