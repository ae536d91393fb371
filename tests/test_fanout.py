"""Recipients, list copies and fan-out: pure, no sockets."""

from __future__ import annotations

import pytest

from listkeeper.engine.fanout import Refused, fan_out, list_copy
from listkeeper.engine.headers import RawMessage
from listkeeper.engine.recipients import Recipient, Refusal, Target, accept_recipient
from listkeeper.engine.snapshot import ListConfig, Snapshot
from listkeeper.manifests.domains import DomainSpec
from listkeeper.manifests.lists import MailingListSpec

MEMBERS = ListConfig("members", MailingListSpec(
    address="members@example.org", type="discussion", subject_prefix="[members]", description="Members",
    subscribers=[{"address": "alice@example.org"}, {"address": "bob@example.net"},
                 {"address": "carol@example.com", "roles": ["digest"]},
                 {"address": "mod@example.org", "roles": ["moderator"]}]))
SNAPSHOT = Snapshot(
    7, {"example.org": DomainSpec(domain="example.org", hostname="lists.example.org",
                                  postmaster="pm@example.org")},
    {MEMBERS.spec.address: MEMBERS}, (), {})
BODY = b"Line one\r\n\r\nLine three with trailing spaces   \r\n.\r\n"
MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: members@example.org\r\nSubject: Hello\r\n"
           b"Message-ID: <1@example.org>\r\nList-Id: <other.example.net>\r\n\r\n" + BODY)


@pytest.mark.parametrize("address,expected", [
    ("members@example.org", Target.post),
    ("MEMBERS@Example.ORG", Target.post),
    ("members-owner@example.org", Target.owner),
    ("members-bounces@example.org", Target.bounces),
    ("postmaster@example.org", Target.postmaster),
    ("members-request@example.org", Target.request),
])
def test_accepted_recipients(address, expected):
    result = accept_recipient(address, SNAPSHOT)
    assert isinstance(result, Recipient) and result.target is expected


@pytest.mark.parametrize("address,reply", [
    ("someone@gmail.com", "550 5.7.1 Relaying denied: we do not serve this domain"),
    ("nobody@example.org", "550 5.1.1 No such list or user here"),
    ("members-nothing@example.org", "550 5.1.1 No such list or user here"),
    ("members-owner+x@example.org", "550 5.1.1 No such list or user here"),
    ("no-at-sign", "501 5.1.3 Bad recipient address syntax"),
])
def test_refused_recipients(address, reply):
    result = accept_recipient(address, SNAPSHOT)
    assert isinstance(result, Refusal) and result.reply == reply


def test_list_copy_headers_and_untouched_body():
    copy = RawMessage.parse(list_copy(RawMessage.parse(MESSAGE), MEMBERS, "lists.example.org", 0.0))
    assert copy.body == BODY
    assert copy.get("subject") == "[members] Hello"
    assert copy.get_all("list-id") == ['"Members" <members.example.org>']
    assert copy.get("list-post") == "<mailto:members@example.org>"
    assert copy.get("list-unsubscribe") == "<mailto:members-request@example.org?subject=unsubscribe>"
    assert copy.get("x-loop") == "members@example.org"
    assert copy.get("message-id") == "<1@example.org>"


def test_prefix_is_not_doubled_and_missing_ids_are_added():
    raw = b"From: a@example.org\nSubject: Re: [members] Hello\n\nbody\n"
    copy = RawMessage.parse(list_copy(RawMessage.parse(raw), MEMBERS, "lists.example.org", 0.0))
    assert copy.get("subject") == "Re: [members] Hello"
    assert copy.get("message-id").endswith("@lists.example.org>")
    assert copy.get("date") == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert copy.body == b"body\n" and copy.eol == b"\n"


def test_folded_headers_survive():
    raw = b"Subject: a long\r\n  folded subject\r\nFrom: a@example.org\r\n\r\nx"
    parsed = RawMessage.parse(raw)
    assert parsed.get("subject") == "a long  folded subject"
    assert parsed.to_bytes() == raw


@pytest.fixture
def store(db_url):
    """A real store (SQLite, then PostgreSQL) holding the list's manifest subscribers, as apply leaves it."""
    from listkeeper.store import Store, subscribers
    opened = Store.open(db_url)
    with opened.engine.begin() as conn:
        subscribers.sync_manifest(conn, "members", [s.model_dump() for s in MEMBERS.spec.subscribers], 0.0)
    yield opened
    opened.close()


def test_fan_out_to_regular_members_only(store):
    rcpt = accept_recipient("members@example.org", SNAPSHOT)
    record = fan_out(MESSAGE, "alice@example.org", [rcpt], SNAPSHOT, 0.0)
    (post,) = record.posts
    assert post.state == "queued"
    with store.engine.connect() as conn:  # streamed from the store's subscribers when spooled
        assert list(post.each_recipient(conn)) == ["alice@example.org", "bob@example.net"]
    assert post.return_path == "members-bounces@example.org"
    assert record.generation == 7


def test_fan_out_holds_or_refuses_non_member():
    rcpt = accept_recipient("members@example.org", SNAPSHOT)
    held = fan_out(MESSAGE.replace(b"alice@", b"eve@"), "eve@example.net", [rcpt], SNAPSHOT, 0.0)
    notice, post = held.posts
    assert post.state == "held" and post.hold.sender == "eve@example.net" and len(post.hold.token) == 24
    assert notice.reason == "moderation: notice to the moderators"
    strict = ListConfig("members", MailingListSpec.model_validate({**MEMBERS.spec.model_dump(), "non_members": "reject"}))
    snapshot = Snapshot(7, SNAPSHOT.domains, {strict.spec.address: strict}, (), {})
    result = fan_out(MESSAGE.replace(b"alice@", b"eve@"), "eve@example.net",
                     [accept_recipient("members@example.org", snapshot)], snapshot, 0.0)
    assert isinstance(result, Refused) and result.reply == "550 5.7.1 Only subscribers may post to members@example.org"


def test_owner_and_postmaster_are_forwarded(store):
    rcpts = [accept_recipient(a, SNAPSHOT) for a in ("members-owner@example.org", "postmaster@example.org")]
    record = fan_out(MESSAGE, "x@example.net", rcpts, SNAPSHOT, 0.0)
    with store.engine.connect() as conn:
        assert [list(p.each_recipient(conn)) for p in record.posts] == [["mod@example.org"], ["pm@example.org"]]
    assert all(p.data == MESSAGE for p in record.posts)


def test_request_gets_a_reply(store):
    rcpt = accept_recipient("members-request@example.org", SNAPSHOT)
    asking = b"From: x@example.net\r\nSubject: unsubscribe\r\nMessage-ID: <q@x>\r\n\r\n"
    record = fan_out(asking, "x@example.net", [rcpt], SNAPSHOT, 0.0)
    (kept,) = record.posts
    assert kept.state == "request" and len(record.then) == 1
    with store.engine.begin() as conn:
        (answer,) = record.then[0](conn, 0.0)
    assert answer.recipients == ("x@example.net",)
    reply = RawMessage.parse(answer.data)
    assert reply.get("subject") == "Re: unsubscribe" and reply.get("in-reply-to") == "<q@x>"
    assert reply.get("auto-submitted") == "auto-replied"
    assert b"x@example.net is not subscribed to members@example.org; nothing changed." in answer.data


@pytest.mark.parametrize("headers,mail_from", [
    (b"Auto-Submitted: auto-replied\r\n", "x@example.net"), (b"Precedence: bulk\r\n", "x@example.net"),
    (b"", ""), (b"", "MAILER-DAEMON@example.net"), (b"List-Id: <other.example.net>\r\n", "x@example.net"),
])
def test_no_reply_to_automatic_mail(headers, mail_from):
    rcpt = accept_recipient("members-request@example.org", SNAPSHOT)
    record = fan_out(b"From: x@example.net\r\n" + headers + b"\r\nhelp\r\n", mail_from, [rcpt], SNAPSHOT, 0.0)
    assert [p.state for p in record.posts] == ["request"]
