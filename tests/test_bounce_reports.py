"""Reading real bounces of several MTAs: which addresses failed, hard or soft, and what was said."""

from __future__ import annotations

from pathlib import Path

import pytest

from listkeeper.engine.bounce_reports import HARD, SOFT, is_auto_reply, is_report, read

DATA = Path(__file__).parent / "data" / "bounces"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.mark.parametrize("name, expected, detail", [
    ("postfix.eml", [("alice@example.net", HARD)], "5.0.0 smtp; 550 Requested action not taken"),
    ("postfix-smtputf8.eml", [("bob@example.net", HARD)], "5.4.4 X-Postfix; Host or domain name not found"),
    ("postfix-delayed.eml", [("dana@example.net", SOFT)], "4.4.1 X-Postfix; connect to mx.example.net"),
    ("gmail.eml", [("gina@example.net", HARD)], "5.1.1 smtp; 550-5.1.1 The email account"),
    ("office365.eml", [("olivia@example.net", HARD)], "5.1.351 smtp;550 5.1.351 Remote server returned"),
    ("exim.eml", [("kim@example.net", HARD), ("sam@example.net", HARD)], "550 5.1.1 (flufl.bounce)"),
    ("sendmail.eml", [("sue@example.net", HARD)], "550 5.1.1 (flufl.bounce)"),
    ("qmail.eml", [("quinn@example.net", HARD)], "550 (flufl.bounce)"),
])
def test_failed_addresses_and_kind_per_mta(name, expected, detail):
    found = read(sample(name))
    assert sorted((f.address, f.kind) for f in found) == expected
    assert found[0].detail.startswith(detail)


def test_a_message_that_is_no_bounce_names_no_failure():
    reply = (b"From: Alice <alice@example.net>\r\nTo: members-bounces@example.org\r\nSubject: Out of office\r\n"
             b"Auto-Submitted: auto-replied\r\n\r\nI am away until Monday; write to bob@example.net.\r\n")
    assert read(reply) == ()


def test_reports_and_auto_replies_are_told_apart():
    assert is_report(sample("gmail.eml")) and not is_report(sample("qmail.eml"))
    assert not is_auto_reply(sample("postfix.eml"))  # a report, though marked auto-replied
    assert is_auto_reply(b"From: a@example.net\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n")
