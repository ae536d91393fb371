"""One-click unsubscribe (RFC 8058): signed tokens and per-recipient headers (pure), the HTTP endpoint
driven by a real HTTP client on loopback, and a post's own link followed end to end."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email import message_from_bytes
from pathlib import Path

import aiohttp
import pytest

from listkeeper.engine.fanout import list_copy
from listkeeper.engine.headers import RawMessage
from listkeeper.engine.oneclick import Links, sign, verify
from listkeeper.engine.snapshot import Snapshot
from listkeeper.manifests.domains import DomainSpec
from listkeeper.store import Store
from listkeeper.store.signing import signing_key

from .conftest import DOMAIN, pickup_routes, wait_for, write
from .test_fanout import MEMBERS, MESSAGE, SNAPSHOT
from .test_membership import DIRECTORY_YAML, SCHEMA, dynamic_list
from .test_relay import free_port
from .test_serve import LISTS, message, send

KEY = bytes(range(32))
LINK = re.compile(r"<(https?://[^>]+/unsubscribe/[^>]+)>")


# --- tokens -------------------------------------------------------------------------------------------

def test_a_token_names_its_list_and_address():
    found = verify(KEY, sign(KEY, "members", "Alice@Example.org"))
    assert (found.list_name, found.address) == ("members", "alice@example.org")


def _swap_payload(token: str, list_name: str, address: str) -> str:
    payload = base64.urlsafe_b64encode(f"{list_name}\n{address}".encode()).rstrip(b"=").decode()
    return f"{payload}.{token.split('.')[1]}"


ALICE = sign(KEY, "members", "alice@example.org")


@pytest.mark.parametrize("token", [
    _swap_payload(ALICE, "members", "bob@example.net"),  # alice's signature, bob's address
    _swap_payload(ALICE, "announce", "alice@example.org"),  # alice's signature, another list
    sign(bytes(32), "members", "alice@example.org"),  # signed with another key: forged
    ALICE[:-1] + ("A" if ALICE[-1] != "A" else "B"),  # one character of the MAC changed
    ALICE.split(".")[0],  # no MAC at all
    "", "..", "not a token", ALICE + ".x", "A" * 5000,
])
def test_forged_or_altered_tokens_are_refused(token):
    assert verify(KEY, token) is None


# --- per-recipient headers ----------------------------------------------------------------------------

def stored_copy() -> bytes:
    return list_copy(RawMessage.parse(MESSAGE), MEMBERS, "lists.example.org", 0.0)


def test_each_recipient_gets_their_own_link_and_the_rest_is_untouched():
    maker = Links(KEY, "https://lists.example.org").personal_copy(stored_copy(), "members", SNAPSHOT)
    alice, bob = maker.for_recipient("alice@example.org"), maker.for_recipient("bob@example.net")
    for address, data in (("alice@example.org", alice), ("bob@example.net", bob)):
        copy = RawMessage.parse(data)
        assert copy.get("list-unsubscribe") == (
            f"<https://lists.example.org/unsubscribe/{sign(KEY, 'members', address)}>, "
            "<mailto:members-request@example.org?subject=unsubscribe>")
        assert copy.get("list-unsubscribe-post") == "List-Unsubscribe=One-Click"
        stored = RawMessage.parse(stored_copy())
        assert copy.body == stored.body and copy.eol == b"\r\n"
        assert [f for f in copy.fields if not f[0].startswith("list-unsubscribe")] == \
            [f for f in stored.fields if f[0] != "list-unsubscribe"]
        assert max(len(line) for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")) < 998


def test_a_domain_web_base_url_wins_over_the_default():
    domain = DomainSpec(domain="example.org", hostname="lists.example.org", postmaster="pm@example.org",
                        web_base_url="https://lists.example.org/mail/")
    snapshot = Snapshot(7, {"example.org": domain}, SNAPSHOT.lists, (), {})
    data = Links(KEY, "http://127.0.0.1:8025").personal_copy(stored_copy(), "members", snapshot) \
        .for_recipient("alice@example.org")
    assert b"List-Unsubscribe: <https://lists.example.org/mail/unsubscribe/" in data


@pytest.mark.parametrize("data,list_name", [
    (MESSAGE, "members"),  # not a list copy: an owner forward, a notice
    (stored_copy(), None),  # a message of no list
    (stored_copy(), "other"),  # a list this snapshot does not serve
    (stored_copy().replace(b"members-request@", b"members-other@"), "members"),  # someone else's header
])
def test_only_list_copies_are_personalised(data, list_name):
    assert Links(KEY, "https://lists.example.org").personal_copy(data, list_name, SNAPSHOT) is None


def test_no_base_url_means_the_mailto_link_alone():
    assert Links(KEY, None).personal_copy(stored_copy(), "members", SNAPSHOT) is None


def test_the_key_is_made_once_and_shared(tmp_path):
    url = f"sqlite:///{tmp_path / 'lk.db'}"
    first, second = Store.open(url), Store.open(url)  # two nodes on one store
    try:
        key = signing_key(first.engine, "unsubscribe")
        assert len(key) == 32 and signing_key(second.engine, "unsubscribe") == key
        assert signing_key(second.engine, "something-else") != key
    finally:
        first.close()
        second.close()


# --- the endpoint, with a real HTTP client --------------------------------------------------------------

@pytest.fixture
def conf(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    write(folder, "domain.yaml", DOMAIN)
    write(folder, "lists.yaml", LISTS)
    write(folder, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return folder


def state_of(store_url: str, list_name: str, address: str):
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    try:
        row = db.execute("select state, source from subscribers where list_name=? and address=?",
                         (list_name, address)).fetchone()
        changes = db.execute("select action, source from subscription_changes where list_name=? and address=? "
                             "and source='web'", (list_name, address)).fetchall()
        return (row[0] if row else None), changes
    finally:
        db.close()


ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def test_endpoint_page_one_click_and_refusals(conf, engine_for, store_url):
    engine = await engine_for(conf)
    base = engine.web.url
    url = engine.links.url(engine.snapshot, engine_list(engine, "members"), "alice@example.org")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:  # a GET only asks
            assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
            html = await page.text()
        assert "alice@example.org" in html and "members@example.org" in html
        assert '<form method="post">' in html and 'name="List-Unsubscribe" value="One-Click"' in html
        assert state_of(store_url, "members", "alice@example.org") == ("active", [])

        token = url.rsplit("/", 1)[1]
        for forged in (_swap_payload(token, "members", "bob@example.net"),  # another address
                       _swap_payload(token, "announce", "alice@example.org"),  # another list
                       sign(bytes(32), "members", "bob@example.net"),  # another key
                       "garbage"):
            for method in ("GET", "POST"):
                async with http.request(method, f"{base}/unsubscribe/{forged}", data=ONE_CLICK) as refused:
                    assert refused.status == 403, (method, forged)
                    assert "not valid" in await refused.text()
        async with http.post(url, data={"something": "else"}) as bad:  # not the RFC 8058 body
            assert bad.status == 400
        assert state_of(store_url, "members", "bob@example.net") == ("active", [])
        assert state_of(store_url, "members", "alice@example.org") == ("active", [])

        async with http.post(url, data=ONE_CLICK) as done:  # one click, no further step
            assert done.status == 200 and "unsubscribed" in await done.text()
        assert state_of(store_url, "members", "alice@example.org") == ("unsubscribed", [("leave", "web")])
        assert state_of(store_url, "announce", "alice@example.org") == ("active", [])  # other lists untouched

        async with http.post(url, data=ONE_CLICK) as again:  # harmless
            assert again.status == 200 and "already unsubscribed" in await again.text()
        async with http.get(url) as page:
            assert "already unsubscribed" in await page.text() and "<form" not in await page.text()
        assert state_of(store_url, "members", "alice@example.org") == ("unsubscribed", [("leave", "web")])


def engine_list(engine, name: str):
    return next(lst for lst in engine.snapshot.lists.values() if lst.name == name)


def link_in(path: Path) -> str:
    msg = message_from_bytes(path.read_bytes())
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    return LINK.search(msg["List-Unsubscribe"]).group(1)


def files_for(folder: Path, address: str) -> list[Path]:
    return sorted(folder.glob(f"*-{address}.eml")) if folder.exists() else []


async def test_the_link_in_a_delivered_post_unsubscribes_its_recipient(tmp_path, conf, engine_for, store_url):
    engine = await engine_for(conf)
    outbox = tmp_path / "outbox"
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("alice@example.org", "members@example.org", "First"))
    await wait_for(lambda: len(list(outbox.glob("*.eml"))) == 4)
    (bobs,) = files_for(outbox, "bob@example.net")
    link, alices = link_in(bobs), link_in(files_for(outbox, "alice@example.org")[0])
    assert link != alices  # each recipient their own
    async with aiohttp.ClientSession() as http:
        async with http.post(link, data=ONE_CLICK) as done:  # what a mailbox provider does
            assert done.status == 200
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("alice@example.org", "members@example.org", "Second"))
    await wait_for(lambda: len(list(outbox.glob("*.eml"))) == 7)
    assert len(files_for(outbox, "bob@example.net")) == 1  # the second post no longer reaches bob
    assert len(files_for(outbox, "alice@example.org")) == 2
    assert state_of(store_url, "members", "bob@example.net") == ("unsubscribed", [("leave", "web")])


@pytest.fixture
def dynamic_conf(tmp_path):
    path = tmp_path / "directory.db"
    sqlite3.connect(path).executescript(SCHEMA)
    conf = tmp_path / "conf"
    write(conf, "domain.yaml", DOMAIN)
    write(conf, "dir.yaml", DIRECTORY_YAML.replace("URL", f"sqlite:///{path}"))
    write(conf, "list.yaml", dynamic_list("      - {field: role, is: board}\n"))
    write(conf, "routes.yaml", pickup_routes(tmp_path / "outbox"))
    return conf


async def test_a_dynamic_list_member_opts_out_in_one_click(tmp_path, dynamic_conf, engine_for, store_url):
    engine = await engine_for(dynamic_conf)
    outbox = tmp_path / "outbox"
    await send(engine.port, "di@initech.example", ["board@example.org"],
               b"From: di@initech.example\r\nSubject: Board\r\n\r\nHi board.\r\n")
    await wait_for(lambda: len(list(outbox.glob("*.eml"))) == 2)
    link = link_in(files_for(outbox, "ann@acme.example")[0])
    async with aiohttp.ClientSession() as http:
        async with http.post(link, data=ONE_CLICK) as done:
            assert done.status == 200 and "unsubscribed" in await done.text()
        async with http.post(link, data=ONE_CLICK) as again:
            assert again.status == 200 and "already unsubscribed" in await again.text()
    assert state_of(store_url, "board", "ann@acme.example") == ("unsubscribed", [("leave", "web")])
    await send(engine.port, "di@initech.example", ["board@example.org"],
               b"From: di@initech.example\r\nSubject: Again\r\n\r\nx\r\n")
    await wait_for(lambda: len(files_for(outbox, "di@initech.example")) == 2)
    assert len(files_for(outbox, "ann@acme.example")) == 1  # the query still selects her; her choice wins
    env = {**os.environ, "LISTKEEPER_STORE": store_url}
    preview = subprocess.run([sys.executable, "-m", "listkeeper", "members", "board", "--preview"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert preview.stdout.splitlines() == ["1 member(s) selected now:", "  di@initech.example"]


# --- `listkeeper serve` -----------------------------------------------------------------------------------

def test_serve_listens_for_one_click_and_never_prints_the_key(tmp_path, conf):
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path / 'lk.db'}"}
    bad = subprocess.run([sys.executable, "-m", "listkeeper", "serve", "conf", "--base-url", "ftp://x"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "'ftp://x' is not an http(s) URL" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "listkeeper", "serve", "conf", "--port", str(free_port()),
                             "--http-port", "0", "--base-url", "https://lists.example.org/"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            lines.append(line)
            if "listkeeper serving" in line or time.monotonic() > deadline:
                break
        found = [re.search(r"one-click unsubscribe on (http://127\.0\.0\.1:\d+) as https://lists\.example\.org$",
                           line.strip()) for line in lines]
        assert any(found), lines
        listener = next(m for m in found if m).group(1)
        with urllib.request.urlopen(f"{listener}/unsubscribe/{ALICE}", timeout=10) as page:
            raise AssertionError(f"a token signed with another key was accepted: {page.status}")
    except urllib.error.HTTPError as refused:
        assert refused.code == 403
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    key = sqlite3.connect(tmp_path / "lk.db").execute(
        "select value from meta where key='signing_key.unsubscribe'").fetchone()[0]
    assert len(key) == 64 and key not in "".join(lines) + out


def test_http_port_in_use_is_a_clear_error(tmp_path, conf):
    env = {**os.environ, "LISTKEEPER_STORE": f"sqlite:///{tmp_path / 'lk.db'}"}
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "listkeeper", "serve", "conf", "--port", str(free_port()),
                                 "--http-port", str(port)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
