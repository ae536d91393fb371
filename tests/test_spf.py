"""SPF (RFC 7208) on arrival: the client's address checked against the MAIL FROM domain's record, asked of the
loopback name server through our resolver, and DMARC passing on an aligned SPF pass. The checker first, then
the engine end to end: an unsigned post whose sender's domain relies on SPF alone is sealed as passing."""

from __future__ import annotations

import re
from pathlib import Path

import authres
import dkim
import pytest

from listkeeper.delivery.resolver import MxResolver
from listkeeper.engine.authresults import DkimCheck, InboundAuth, SpfCheck, dmarc_result, field_value
from listkeeper.engine.spfcheck import Arrival, SpfChecker

from .conftest import wait_for, write
from .dkimkeys import dnsfunc_for, key_record, new_key
from .dnsserver import ZoneServer
from .test_arc import field_values
from .test_dkim import domain_yaml
from .test_dmarc import copies, post, routes, send

ELEVEN = " ".join(f"include:i{n}.many.test" for n in range(1, 12))


def zone_records(our_key) -> dict:
    zone = {
        "lk2024._domainkey.example.org": [key_record(our_key)],
        "_dmarc.example.org": [("TXT", '"v=DMARC1; p=reject"')],
        "spf.test": [("TXT", '"v=spf1 ip4:192.0.2.0/24 ip4:127.0.0.1 -all"'), ("TXT", '"some-verification=1"')],
        "mail.spf.test": [("TXT", '"v=spf1 redirect=spf.test"')],
        "_dmarc.spf.test": [("TXT", '"v=DMARC1; p=reject"')],
        "mail.strictspf.test": [("TXT", '"v=spf1 a:host.strictspf.test -all"')],
        "host.strictspf.test": [("A", "127.0.0.1")],
        "_dmarc.strictspf.test": [("TXT", '"v=DMARC1; p=reject; aspf=s"')],
        "elsewhere.test": [("TXT", '"v=spf1 ip4:192.0.2.1 -all"')],
        "_dmarc.elsewhere.test": [("TXT", '"v=DMARC1; p=reject"')],
        "soft.test": [("TXT", '"v=spf1 mx ~all"'), ("MX", 10, "mx.soft.test")], "mx.soft.test": [("A", "192.0.2.7")],
        "many.test": [("TXT", f'"v=spf1 {ELEVEN} -all"')],
        "void.test": [("TXT", '"v=spf1 a:nx1.void.test a:nx2.void.test a:nx3.void.test ip4:127.0.0.1 -all"')],
        "bad.test": [("TXT", '"v=spf1 ip4:127.0.0.1 bogus:x -all"')],
        "two.test": [("TXT", '"v=spf1 -all"'), ("TXT", '"v=spf1 +all"')],
        "broken.test": [("TXT", '"v=spf1 include:down.test -all"')],
        "helo.spf.test": [("TXT", '"v=spf1 ip4:127.0.0.1 -all"')],
        "_dmarc.none.test": [("TXT", '"v=DMARC1; p=reject"')], "none.test": [("A", "192.0.2.9")],
    }
    for n in range(1, 12):
        zone[f"i{n}.many.test"] = [("TXT", '"v=spf1 ip4:192.0.2.200 ?all"')]
    return zone


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    """(our key file, the name server publishing our key, the senders' SPF and DMARC records)."""
    folder = tmp_path_factory.mktemp("spf")
    ours = new_key(folder / "example.org.pem")
    with ZoneServer(zone_records(ours), ttl=300, fail={"down.test": "servfail"}) as server:
        yield folder / "example.org.pem", server


@pytest.fixture
async def checker():
    found = SpfChecker()
    yield found
    found.close()


# --- the checker, against the name server --------------------------------------------------------------

@pytest.mark.parametrize("client, mail_from, expected", [
    ("127.0.0.1", "alice@spf.test", SpfCheck("pass", "spf.test")),
    ("192.0.2.55", "alice@SPF.test", SpfCheck("pass", "spf.test")),
    ("198.51.100.1", "alice@spf.test", SpfCheck("fail", "spf.test")),
    ("127.0.0.1", "bounces@mail.spf.test", SpfCheck("pass", "mail.spf.test")),  # redirect=
    ("127.0.0.1", "alice@elsewhere.test", SpfCheck("fail", "elsewhere.test")),
    ("127.0.0.1", "bob@soft.test", SpfCheck("softfail", "soft.test")),
    ("192.0.2.7", "bob@soft.test", SpfCheck("pass", "soft.test")),  # mx
    ("127.0.0.1", "carol@many.test", SpfCheck("permerror", "many.test")),  # 11 includes: over the 10 lookups
    ("127.0.0.1", "dave@void.test", SpfCheck("permerror", "void.test")),  # a third void lookup
    ("127.0.0.1", "erin@bad.test", SpfCheck("permerror", "bad.test")),
    ("127.0.0.1", "frank@two.test", SpfCheck("permerror", "two.test")),  # two records
    ("127.0.0.1", "gina@broken.test", SpfCheck("temperror", "broken.test")),  # an include whose server fails
    ("127.0.0.1", "henry@none.test", SpfCheck("none", "none.test")),  # no record
    ("127.0.0.1", "ivan@nowhere.test", SpfCheck("none", "nowhere.test")),  # no such domain
    ("127.0.0.1", "judy@localhost", SpfCheck("none", "localhost")),  # not a multi-label name: nothing asked
])
async def test_the_client_is_checked_against_the_mail_from_domain(zone, checker, client, mail_from, expected):
    resolver = MxResolver([zone[1].address])
    assert await checker.check(Arrival(client, mail_from, "client.example"), resolver, "lists.example.org") == expected


async def test_a_null_sender_is_checked_by_its_helo_name(zone, checker):
    resolver = MxResolver([zone[1].address])
    assert await checker.check(Arrival("127.0.0.1", "", "helo.spf.test"), resolver, "r") == SpfCheck(
        "pass", "helo.spf.test", "helo")
    assert await checker.check(Arrival("127.0.0.1", "", "[127.0.0.1]"), resolver, "r") == SpfCheck(
        "none", "[127.0.0.1]", "helo")
    assert await checker.check(Arrival("", "alice@spf.test", "h"), resolver, "r") is None  # no client address


async def test_a_name_server_that_never_answers_is_a_temporary_error(zone, checker):
    zone[1].fail["slow.test"] = "drop"
    try:
        resolver = MxResolver([zone[1].address], timeout=0.3)
        assert await checker.check(Arrival("127.0.0.1", "a@slow.test", "h"), resolver, "r") == SpfCheck(
            "temperror", "slow.test")
    finally:
        del zone[1].fail["slow.test"]


async def test_nothing_is_asked_of_other_name_servers(zone, checker):
    """pyspf's own DNS is never used: outside a check of ours its lookups are temporary errors."""
    import spf
    assert spf.query(i="127.0.0.1", s="alice@spf.test", h="h").check()[0] == "temperror"


# --- DMARC and the field ---------------------------------------------------------------------------------

def test_dmarc_passes_on_aligned_spf():
    record = ("spf.test", {"p": "reject"})
    assert dmarc_result("spf.test", (), record, SpfCheck("pass", "spf.test")) == "pass"
    assert dmarc_result("spf.test", (), record, SpfCheck("pass", "mail.spf.test")) == "pass"  # relaxed
    assert dmarc_result("spf.test", (), ("spf.test", {"p": "reject", "aspf": "s"}),
                        SpfCheck("pass", "mail.spf.test")) == "fail"
    assert dmarc_result("spf.test", (), ("spf.test", {"p": "reject", "adkim": "s"}),
                        SpfCheck("pass", "mail.spf.test")) == "pass"  # adkim= is DKIM's alone
    assert dmarc_result("spf.test", (), record, SpfCheck("pass", "other.test")) == "fail"  # not aligned
    assert dmarc_result("spf.test", (), record, SpfCheck("softfail", "spf.test")) == "fail"
    assert dmarc_result("spf.test", (), record, SpfCheck("temperror", "spf.test")) == "temperror"
    signed = (DkimCheck("pass", "spf.test", "s"),)
    assert dmarc_result("spf.test", signed, record, SpfCheck("fail", "spf.test")) == "pass"
    assert dmarc_result("spf.test", (), None, SpfCheck("pass", "spf.test")) == "none"


def test_the_field_says_what_spf_gave_and_parses():
    auth = InboundAuth((), "pass", "reject", "spf.test", "none", SpfCheck("pass", "spf.test"))
    value = field_value(auth, "lists.example.org")
    assert value == ("lists.example.org; dkim=none; spf=pass smtp.mailfrom=spf.test; "
                     "dmarc=pass (p=reject) header.from=spf.test; arc=none")
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    spf = [r for r in parsed.results if r.method == "spf"]
    assert parsed.authserv_id == "lists.example.org"
    assert [(r.result, r.smtp_mailfrom) for r in spf] == [("pass", "spf.test")]
    helo = field_value(InboundAuth(spf=SpfCheck("none", "[127.0.0.1]", "helo")), "h.test")
    assert "spf=none smtp.helo=\"[127.0.0.1]\";" in helo
    parsed = authres.AuthenticationResultsHeader.parse_value(helo)
    assert [r.result for r in parsed.results if r.method == "spf"] == ["none"]


# --- end to end -----------------------------------------------------------------------------------------

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
    - address: alice@spf.test
    - address: alice@elsewhere.test
    - address: carol@many.test
    - address: henry@none.test
    - address: sam@strictspf.test
"""


def configure(tmp_path: Path, zone, seal: bool = True) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", domain_yaml(zone[0], extra="    arc: true\n" if seal else ""))
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", routes(tmp_path / "outbox", zone[1]))
    zone[1].log.clear()
    return folder


def our_results(data: bytes) -> str:
    found = [v for v in field_values(data, "Authentication-Results") if v.startswith("lists.example.org")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("mail_from, author, spf, dmarc", [
    ("alice@spf.test", "alice@spf.test", "spf=pass smtp.mailfrom=spf.test", "dmarc=pass (p=reject)"),
    ("bounces@mail.spf.test", "alice@spf.test", "spf=pass smtp.mailfrom=mail.spf.test", "dmarc=pass (p=reject)"),
    ("sam@mail.strictspf.test", "sam@strictspf.test", "spf=pass smtp.mailfrom=mail.strictspf.test",
     "dmarc=fail (p=reject)"),  # aspf=s
    ("alice@elsewhere.test", "alice@elsewhere.test", "spf=fail smtp.mailfrom=elsewhere.test", "dmarc=fail (p=reject)"),
    ("carol@many.test", "carol@many.test", "spf=permerror smtp.mailfrom=many.test", "dmarc=none"),
    ("henry@none.test", "henry@none.test", "spf=none smtp.mailfrom=none.test", "dmarc=fail (p=reject)"),
])
async def test_an_unsigned_post_is_sealed_with_what_spf_gave(tmp_path, zone, engine_for, mail_from, author, spf,
                                                            dmarc):
    engine = await engine_for(configure(tmp_path, zone))
    subject = f"Unsigned from {mail_from}"
    errors, reply = await send(engine.port, mail_from, "talk@example.org", post(author, subject))
    assert errors == {} and reply.startswith("2.0.0 Queued"), reply
    delivered = await wait_for(lambda: len(copies(tmp_path, subject)) == 5 and copies(tmp_path, subject))
    for data in delivered:
        cv, results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc_for(zone[1]))
        assert cv == dkim.CV_Pass, reason
        aar = re.sub(r"\s+", " ", results[0]["aar-value"].decode())
        assert f"dkim=none; {spf}; {dmarc}" in aar, aar
        assert f"dkim=none; {spf}; {dmarc}" in our_results(data)
        parsed = authres.AuthenticationResultsHeader.parse_value(our_results(data))
        assert [r.result for r in parsed.results if r.method == "spf"] == [spf.split()[0].split("=")[1]]


async def test_without_arc_spf_is_not_evaluated(tmp_path, zone, engine_for):
    engine = await engine_for(configure(tmp_path, zone, seal=False))
    await send(engine.port, "alice@spf.test", "talk@example.org", post("alice@spf.test", "Not sealed"))
    delivered = await wait_for(lambda: len(copies(tmp_path, "Not sealed")) == 5 and copies(tmp_path, "Not sealed"))
    assert all(b"ARC-" not in data for data in delivered)
    assert zone[1].count("spf.test", "TXT") == 0  # nothing looked up that nobody reads
