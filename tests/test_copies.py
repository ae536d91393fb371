"""Archive copies and file backups of sent mail; the backup path can never leave its folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from listkeeper.delivery.backup import backup_path, clean
from listkeeper.manifests.routes import Backup

from .conftest import wait_for
from .smtpsink import start_sink
from .test_scheduler import config, post


@pytest.mark.parametrize("value,expected", [
    ("plain", "plain"), ("../../etc/passwd", "etc_passwd"), ("a/b\\c", "a_b_c"), ("new\r\nline", "new_line"),
    ("..", "_"), ("", "_"), ("Ünïcode ☃", "n_code"), ("x" * 200, "x" * 80),
])
def test_clean(value, expected):
    assert clean(value) == expected


def test_backup_path_stays_inside():
    path = backup_path("{date}/{list}/{subject}-{recipient}.eml", list_name="../..", recipient="a@b.org",
                       subject="/etc/shadow\x00", date="2026-11-23", message_id="<x@y>")
    assert path == Path("2026-11-23/_/etc_shadow-a@b.org.eml")
    assert not path.is_absolute() and ".." not in path.parts


@pytest.mark.parametrize("template,message", [
    ("{date}/{nope}.eml", "unknown placeholder(s) nope"),
    ("/abs/{list}.eml", "must stay inside the backup folder"),
    ("../{list}.eml", "must stay inside the backup folder"),
])
def test_bad_templates_are_validation_errors(template, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Backup(folder="b", path=template)


async def test_archive_copy_and_backup_of_every_sent_message(tmp_path, engine_for):
    sink, controller = start_sink()
    try:
        delivery = (f"    archive_copy: archive@example.org\n"
                    f"    backup: {{folder: {tmp_path / 'backup'}, path: '{{list}}/{{recipient}}-{{subject}}.eml'}}")
        engine = await engine_for(config(tmp_path, controller.port, ["a@example.net", "b@example.com"],
                                         delivery=delivery))
        await post(engine, "Hi ../../there")
        await wait_for(lambda: len(sink.received) == 2)
        archived = await wait_for(lambda: list((tmp_path / "local").glob("*archive@example.org.eml")))
        assert b"Subject: Hi ../../there" in archived[0].read_bytes()
        files = await wait_for(lambda: sorted(p.relative_to(tmp_path / "backup")
                                              for p in (tmp_path / "backup").rglob("*.eml")) or None)
        assert files == [Path("members/a@example.net-Hi_there.eml"), Path("members/archive@example.org-Hi_there.eml"),
                         Path("members/b@example.com-Hi_there.eml")]
    finally:
        controller.stop()


async def test_odd_headers_never_cost_a_delivery_its_outcome(tmp_path, engine_for, store_url):
    import sqlite3
    from .test_serve import send
    sink, controller = start_sink()
    try:
        delivery = f"    backup: {{folder: {tmp_path / 'backup'}}}"
        engine = await engine_for(config(tmp_path, controller.port, ["a@example.net"], delivery=delivery))
        await send(engine.port, "poster@example.org", ["members@example.org"],
                   b"From: poster@example.org\r\nMessage-ID: <>\r\nSubject: =?utf-8?q?=E2=80?=\r\n\r\nx\r\n")
        await wait_for(lambda: sink.received)
        db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        await wait_for(lambda: db.execute("select state from deliveries where recipient='a@example.net'")
                       .fetchone() == ("delivered",))
        db.close()
    finally:
        controller.stop()
