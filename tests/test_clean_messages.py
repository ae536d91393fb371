"""Every kind of message the engine writes is standards-clean: Date, a unique Message-ID on our host name,
MIME-Version beside any MIME field, lines within 998 octets, no parser defects, and it survives an
email.policy.SMTP round trip unchanged. One of each kind is made by the code that makes it in service."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import SMTP
from email.utils import parsedate_to_datetime

import pytest

from listkeeper.delivery import dsn
from listkeeper.delivery.signing import DomainKey, header_fields, split
from listkeeper.engine import bounces, digests, dmarc, events, moderation
from listkeeper.engine.fanout import list_copy
from listkeeper.engine.headers import RawMessage
from listkeeper.engine.oneclick import Links
from listkeeper.engine.replies import command_reply, notice
from listkeeper.engine.snapshot import ListConfig, Snapshot
from listkeeper.manifests.domains import DomainSpec
from listkeeper.manifests.events import EventSpec
from listkeeper.manifests.lists import MailingListSpec
from listkeeper.manifests.signing_keys import load_dkim_key
from listkeeper.manifests.common import SecretRef
from listkeeper.store.queue import Hold

from .dkimkeys import new_key

HOST = "lists.example.org"
NOW = 1_700_000_000.0
LIST = ListConfig("members", MailingListSpec(
    address="members@example.org", type="discussion", subject_prefix="[members]", description="Members",
    dmarc="munge", subscribers=[{"address": "alice@example.org"}, {"address": "mod@example.org",
                                                                   "roles": ["moderator"]}]))
SNAPSHOT = Snapshot(1, {"example.org": DomainSpec(domain="example.org", hostname=HOST, postmaster="pm@example.org",
                                                  web_base_url="https://lists.example.org")},
                    {LIST.spec.address: LIST}, (), {})
LONG_SUBJECT = " ".join(["a-long-subject-word"] * 60)  # about 1,200 characters, folded by the poster
POST = ("From: =?utf-8?q?Zo=C3=AB?= <zoe@strict.test>\r\nTo: members@example.org\r\n"
        "Subject: " + "\r\n ".join(LONG_SUBJECT[i:i + 70] for i in range(0, len(LONG_SUBJECT), 70)) + "\r\n"
        "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <poster-1@strict.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße aus der Liste.\r\n").encode()
AUTOMATIC = {"auto-generated", "auto-replied"}


def made() -> dict[str, tuple[bytes, str | None]]:
    """kind -> (the bytes, the Auto-Submitted value it must carry or None for list traffic)."""
    message = RawMessage.parse(POST)
    copy = list_copy(message, LIST, HOST, NOW)
    personal = Links(b"k" * 32, None).personal_copy(copy, "members", SNAPSHOT).for_recipient("alice@example.org")
    hold = Hold("0123456789abcdef01234567", "zoe@strict.test", "Hello", NOW + 86400)
    event = EventSpec.model_validate({"name": "welcome", "template": {
        "subject": "Welcome to {{ list.name }}, " + "é" * 40, "body": "Hello {{ subscriber.address }}.\n" * 3}})
    failures = [dsn.Failure("bob@example.net", "mx.example.net:25: 550 5.1.1 User unknown")]
    return {
        "list copy": (copy, None),
        "list copy for one recipient": (personal, None),
        "munged post": (list_copy(dmarc.munge(message, LIST), LIST, HOST, NOW), None),
        "wrapped post": (list_copy(dmarc.wrap(message, LIST, HOST), LIST, HOST, NOW), None),
        "command reply": (command_reply("members-request@example.org", "members@example.org", message,
                                        "zoe@strict.test", HOST, NOW, "> help\n" + "Commands: ...\n" * 30),
                          "auto-replied"),
        "confirmation request": (notice("members-request@example.org", "zoe@strict.test", "confirm abc", "Reply.",
                                        HOST, NOW, reply_to="members-confirm+abc@example.org",
                                        auto="auto-replied").as_bytes(), "auto-replied"),
        "hold notice": (moderation.hold_notice(LIST, hold, "not a member", message, HOST, NOW), "auto-generated"),
        "moderation notice to the sender": (moderation._to_sender(LIST, SNAPSHOT, "zoe@strict.test", "Rejected",
                                                                  "Your post was rejected.", NOW).data,
                                            "auto-generated"),
        "bounce notice to the owner": (bounces.owner_notice(LIST, SNAPSHOT, "bob@example.net", 5.0,
                                                            bounces.Attributed("bob@example.net", "hard", "550"),
                                                            POST, NOW).data, "auto-generated"),
        "digest": (digests.build(LIST, [copy, personal], 1, 2, HOST, NOW), None),
        "event mail": (events.template_mail(LIST, event, "alice@example.org", {"welcome": 1}, HOST, NOW),
                       "auto-generated"),
        "delivery report": (dsn.delivery_report(original=copy, envelope_from="zoe@strict.test", failures=failures,
                                                reporting_host=HOST, arrival=NOW - 60, now=NOW), "auto-replied"),
        "postmaster notice": (dsn.postmaster_notice(original=copy, envelope_from="zoe@strict.test",
                                                    failures=failures, reporting_host=HOST,
                                                    postmaster="pm@example.org", now=NOW), "auto-generated"),
    }


MADE = made()


def lines_of(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def could_fold(line: bytes) -> bool:
    """A header line over 78 characters that has white space to fold at (RFC 5322 2.1.1 SHOULD)."""
    if len(line) <= 78:
        return False
    words = line.split()
    return len(words) > (1 if line[:1] in (b" ", b"\t") else 2)


@pytest.mark.parametrize("kind", sorted(MADE))
def test_every_generated_message_is_clean(kind):
    data, auto = MADE[kind]
    mail = BytesParser(policy=SMTP).parsebytes(data)
    assert all(not part.defects for part in mail.walk()), [part.defects for part in mail.walk()]
    assert parsedate_to_datetime(mail["Date"]) is not None
    assert len(mail.get_all("Date")) == 1 and len(mail.get_all("Message-ID")) == 1
    message_id = mail["Message-ID"]
    if kind.startswith("list copy") or kind == "munged post":
        assert message_id == "<poster-1@strict.test>"  # the poster's, kept: replies thread
    else:
        assert message_id.startswith("<") and message_id.endswith(f"@{HOST}>"), message_id
    assert all(len(line) <= 998 for line in lines_of(data)), kind
    head = data.split(b"\r\n\r\n", 1)[0]
    assert not [line for line in lines_of(head) if could_fold(line)], kind
    if any(name.lower().startswith("content-") for name in mail.keys()):
        assert mail["MIME-Version"] == "1.0"
    assert mail.get("Auto-Submitted") == auto
    if auto is not None:
        assert auto in AUTOMATIC
    # the SMTP round trip: parsed, written, parsed again: nothing changes
    again = BytesParser(policy=SMTP).parsebytes(mail.as_bytes(policy=SMTP))
    assert [(k, str(v)) for k, v in again.items()] == [(k, str(v)) for k, v in mail.items()]
    assert [p.get_payload(decode=True) for p in again.walk()] == [p.get_payload(decode=True) for p in mail.walk()]


def test_message_ids_are_unique():
    ours = [BytesParser(policy=SMTP).parsebytes(d)["Message-ID"] for d, _ in made().values()]
    ours += [BytesParser(policy=SMTP).parsebytes(d)["Message-ID"] for d, _ in made().values()]
    generated = [m for m in ours if m.endswith(f"@{HOST}>")]
    assert len(generated) == len(set(generated)) > 10


def test_a_signed_copy_is_clean_too(tmp_path):
    new_key(tmp_path / "k.pem")
    key = DomainKey("example.org", "lk2024", (b"from", b"subject", b"list-unsubscribe"),
                    load_dkim_key(SecretRef(file=str(tmp_path / "k.pem"))))
    data = MADE["list copy for one recipient"][0]
    head, body, eol = split(data)
    signed = key.signature(header_fields(head), body, eol, NOW) + data
    mail = BytesParser(policy=SMTP).parsebytes(signed)
    assert not mail.defects and not [line for line in lines_of(signed.split(b"\r\n\r\n")[0]) if could_fold(line)]
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
