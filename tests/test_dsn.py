"""Delivery status notifications: built as bytes, read back with the standard parser as a receiving
mail system would."""

from __future__ import annotations

import email
import email.policy
from email.utils import parsedate_to_datetime

import pytest

from listkeeper.delivery.dsn import Failure, delivery_report, postmaster_notice, should_report, status_code

ORIGINAL = (b"From: Ann <ann@example.org>\r\n"
            b"To: team@lists.example.org\r\n"
            b"Subject: Quarterly figures\r\n"
            b"Message-ID: <q3@example.org>\r\n"
            b"\r\n"
            b"The body is private and must not travel back.\r\n")
FAILURES = [
    Failure("bob@example.net", "mx.example.net:25: 550 5.1.1 <bob@example.net>: User unknown"),
    Failure("carol@example.com", "expired after 5 days: 451 4.3.0 try later", remote_mta="mx.example.com",
            expired=True),
]
ARRIVAL, NOW = 1_700_000_000.0, 1_700_432_000.0


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def report(original: bytes = ORIGINAL, failures: list[Failure] = FAILURES) -> bytes:
    return delivery_report(original=original, envelope_from="<ann@example.org>", failures=failures,
                           reporting_host="lists.example.org", arrival=ARRIVAL, now=NOW)


def notice(original: bytes = ORIGINAL, failures: list[Failure] = FAILURES) -> bytes:
    return postmaster_notice(original=original, envelope_from="ann@example.org", failures=failures,
                             reporting_host="lists.example.org", postmaster="postmaster@example.org", now=NOW)


def blocks(raw: bytes) -> list[dict[str, str]]:
    """The delivery-status part as the parser gives it: one header block per message, then per recipient."""
    status = parse(raw).get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    return [dict(block.items()) for block in status.get_payload()]


def test_report_is_multipart_report_of_three_parts():
    message = parse(report())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [part.get_content_type() for part in message.get_payload()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_report_headers():
    message = parse(report())
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@lists.example.org"
    assert message["To"].addresses[0].addr_spec == "ann@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime.timestamp() == NOW
    assert message["Message-ID"].endswith("@lists.example.org>")


def test_message_ids_are_unique():
    assert len({parse(report())["Message-ID"] for _ in range(50)}) == 50


def test_per_message_fields():
    fields = blocks(report())[0]
    assert fields["Reporting-MTA"] == "dns; lists.example.org"
    assert parsedate_to_datetime(fields["Arrival-Date"]).timestamp() == ARRIVAL


@pytest.mark.parametrize("index,expected", [
    (1, {"Final-Recipient": "rfc822; bob@example.net", "Action": "failed", "Status": "5.1.1",
         "Remote-MTA": "dns; mx.example.net", "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.net>: User unknown"}),
    (2, {"Final-Recipient": "rfc822; carol@example.com", "Action": "failed", "Status": "4.3.0",
         "Remote-MTA": "dns; mx.example.com", "Diagnostic-Code": "smtp; 451 4.3.0 try later"}),
])
def test_per_recipient_fields(index, expected):
    fields = blocks(report())[index]
    assert {name: fields.get(name) for name in expected} == expected
    assert parsedate_to_datetime(fields["Last-Attempt-Date"]).timestamp() == NOW


def test_one_block_per_recipient():
    assert len(blocks(report())) == 1 + len(FAILURES)


@pytest.mark.parametrize("failure,remote,diagnostic_code", [
    (Failure("a@x.test", "550 5.4.4 no route matches this recipient"), None,
     "smtp; 550 5.4.4 no route matches this recipient"),
    (Failure("a@x.test", "mx.x.test:25: cannot connect: OSError: refused", expired=True), None,
     "X-Listkeeper; mx.x.test:25: cannot connect: OSError: refused"),
    (Failure("a@x.test", "relay.x.test:587: 554 5.7.1 rejected"), "dns; relay.x.test", "smtp; 554 5.7.1 rejected"),
    (Failure("a@x.test", "anything", remote_mta="given.x.test"), "dns; given.x.test", "X-Listkeeper; anything"),
])
def test_diagnostic_code_and_remote_mta(failure, remote, diagnostic_code):
    fields = blocks(report(failures=[failure]))[1]
    assert fields.get("Remote-MTA") == remote
    assert fields["Diagnostic-Code"] == diagnostic_code


def test_explanation_names_each_recipient_and_reason():
    text = parse(report()).get_payload()[0].get_content()
    for failure in FAILURES:
        assert f"<{failure.recipient}>" in text
    assert "550 5.1.1 <bob@example.net>: User unknown" in text
    assert "451 4.3.0 try later" in text
    assert "Quarterly figures" in text


@pytest.mark.parametrize("raw", [report, notice])
def test_original_headers_returned_and_body_not(raw):
    built = raw()
    headers = parse(built).get_payload()[2].get_content().replace("\r\n", "\n")
    assert headers == ORIGINAL.split(b"\r\n\r\n")[0].decode().replace("\r\n", "\n") + "\n"
    assert b"private" not in built


@pytest.mark.parametrize("original,expected", [
    (b"Subject: lf only\n\nbody\n", "Subject: lf only\n"),
    (b"Subject: no body at all", "Subject: no body at all\n"),
    (b"", "\n"),
    (b"\r\nbody without headers", "\n"),
])
def test_header_block_edges(original, expected):
    assert parse(report(original)).get_payload()[2].get_content().replace("\r\n", "\n") == expected


LONG_CASES = [
    pytest.param(ORIGINAL, FAILURES, id="ordinary"),
    pytest.param(b"X-Long: " + b"y" * 3000 + b"\r\n\r\nbody", FAILURES, id="long-original-header"),
    pytest.param(ORIGINAL, [Failure("a@x.test", "mx:25: 550 5.1.1 " + "z" * 5000)], id="unbreakable-diagnostic"),
    pytest.param(ORIGINAL, [Failure("a@x.test", "mx:25: 550 5.2.2 " + "full " * 1000)], id="long-diagnostic"),
    pytest.param("Subject: caf\u00e9\r\n\r\nx".encode(), [Failure("jos\u00e9@example.net", "550 nope")],
                 id="non-ascii"),
]


@pytest.mark.parametrize("build", [report, notice])
@pytest.mark.parametrize("original,failures", LONG_CASES)
def test_lines_fit_and_end_in_crlf(build, original, failures):
    built = build(original, failures)
    assert b"\n" not in built.replace(b"\r\n", b"") and b"\r" not in built.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in built.split(b"\r\n"))
    assert built.isascii()  # seven-bit: any server can take it
    assert parse(built).get_content_type() == "multipart/report"


def test_non_ascii_recipient_is_a_utf8_address():
    fields = blocks(report(failures=[Failure("jos\u00e9@example.net", "550 nope")]))[1]
    assert fields["Final-Recipient"] == "utf-8; jos\\x{E9}@example.net"


@pytest.mark.parametrize("diagnostic,expired,expected", [
    ("mx.example.net:25: 550 5.1.1 User unknown", False, "5.1.1"),
    ("expired after 5 days: 451 4.3.0 try later", True, "4.3.0"),
    ("mx.example.net:25: 550-5.7.1 blocked", False, "5.7.1"),
    ("mx.example.net:25: 552 mailbox full", False, "5.0.0"),
    ("mx.example.net:25: 421 too busy", True, "4.0.0"),
    ("550 5.4.4 no route matches this recipient", False, "5.4.4"),
    ("mx.example.net:25: cannot connect: ConnectionRefusedError", True, "4.4.7"),
    ("no relay configured", True, "4.4.7"),
    ("no relay configured", False, "5.0.0"),
    ("relay.example.net:587: cannot connect: timed out", True, "4.4.7"),  # the port is not a reply code
    ("mx[10.4.3.0]:25: cannot connect", True, "4.4.7"),  # nor is part of an address a status
    ("Exchange says #5.2.1 mailbox disabled", False, "5.2.1"),
])
def test_status_code(diagnostic, expired, expected):
    assert status_code(diagnostic, expired) == expected


REPORT = (b"From: MAILER-DAEMON@other.example\r\n"
          b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
          b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b--\r\n")
WRAPPED_REPORT = (b"Auto-Submitted: auto-replied\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                  b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
                  b"Final-Recipient: rfc822; a@x\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n--b--\r\n")
VACATION = b"Auto-Submitted: auto-replied\r\nSubject: Away\r\n\r\nBack Monday.\r\n"


@pytest.mark.parametrize("envelope_from,original,expected", [
    ("ann@example.org", ORIGINAL, True),
    ("<ann@example.org>", ORIGINAL, True),
    ("ann@example.org", b"", True),
    ("", ORIGINAL, False),
    ("<>", ORIGINAL, False),
    ("MAILER-DAEMON@other.example", ORIGINAL, False),
    ("<mailer-daemon@other.example>", ORIGINAL, False),
    ("ann@example.org", REPORT, False),
    ("ann@example.org", WRAPPED_REPORT, False),
    ("ann@example.org", VACATION, True),  # auto-submitted but not a report: its failure is still news
    ("ann@example.org", b"Auto-Submitted: no\r\n\r\nx", True),
])
def test_should_report(envelope_from, original, expected):
    assert should_report(envelope_from, original) is expected


@pytest.mark.parametrize("build", [report, notice])
def test_a_report_never_causes_another(build):
    assert not should_report("ann@example.org", build())


def test_postmaster_notice():
    message = parse(notice())
    assert message["To"].addresses[0].addr_spec == "postmaster@example.org"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@lists.example.org"
    assert "ann@example.org" in message["Subject"]
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_payload()[0].get_content()
    assert "ann@example.org" in text
    for failure in FAILURES:
        assert f"<{failure.recipient}>" in text
        assert failure.diagnostic in text
    assert [b["Final-Recipient"] for b in blocks(notice())[1:]] == [
        "rfc822; bob@example.net", "rfc822; carol@example.com"]
    assert "Arrival-Date" not in blocks(notice())[0]


def test_postmaster_notice_for_a_null_sender():
    message = parse(postmaster_notice(original=ORIGINAL, envelope_from="", failures=FAILURES,
                                      reporting_host="lists.example.org", postmaster="postmaster@example.org",
                                      now=NOW))
    assert "<>" in message.get_payload()[0].get_content()
