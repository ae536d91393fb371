"""A person follows a post's unsubscribe link in a real browser (headless Chromium) and clicks the button."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import wait_for
from .test_oneclick import conf, files_for, link_in, state_of  # noqa: F401 - conf is a fixture
from .test_serve import message, send

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium; .ci/run "
                                              "installs it): the headless browser test cannot run")
async def test_clicking_the_button_in_chromium_unsubscribes(tmp_path, conf, engine_for, store_url):  # noqa: F811
    from playwright.async_api import async_playwright
    engine = await engine_for(conf)
    outbox = tmp_path / "outbox"
    await send(engine.port, "alice@example.org", ["members@example.org"],
               message("alice@example.org", "members@example.org", "Hello"))
    await wait_for(lambda: files_for(outbox, "carol@example.com"))
    link = link_in(files_for(outbox, "carol@example.com")[0])
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await browser.new_page()
            response = await page.goto(link)
            assert response.status == 200
            assert await page.text_content("h1") == "Unsubscribe?"
            assert state_of(store_url, "members", "carol@example.com") == ("active", [])  # looking changes nothing
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            assert await page.text_content("h1") == "Unsubscribed"
            assert "carol@example.com from members@example.org: unsubscribed" in await page.text_content("p")
        finally:
            await browser.close()
    assert state_of(store_url, "members", "carol@example.com") == ("unsubscribed", [("leave", "web")])
