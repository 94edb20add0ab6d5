"""A real headless Chromium (Debian's `chromium`, installed by .ci/run) driven by Playwright, for the console tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.console_client import PASSWORD, ConsoleClient

# What a sandboxed CI machine needs: no sandbox for root, and nothing reaching the internet.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The browser to drive; a missing one fails in CI and skips elsewhere."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        yield launched
        await launched.close()


async def logged_in_page(browser: Browser, client: ConsoleClient) -> Page:
    """A new browser page, logged in through the login form like a user."""
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    await page.goto(client.base + "/")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(client.base + "/")
    return page
