"""The console's log page and its live tail (Server-Sent Events) through real sockets: recent lines, the
level filter, resuming, slow readers, clean ends, and that no configured secret ever reaches the browser."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from loguru import logger
from playwright.async_api import Browser, expect

from core.config import collect_secrets
from core.log import RING, set_secrets, setup_logging
from tests.browser import browser, logged_in_page
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, mirai_url
from tests.console_client import PASSWORD, ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI
from web.console.pages import logs

__all__ = ["browser", "console"]

API_KEY = "sk-test-1"  # the account's key in conftest's config
SECRETS = (PASSWORD, VERIFY_KEY, API_KEY)


def _no_patch(record: Any) -> None:
    """loguru cannot unset a patcher; this one does nothing."""


@pytest.fixture
async def logged(console: Callable[..., Any]) -> AsyncIterator[ConsoleClient]:
    """A logged-in console of a bot whose logging is set up as `python bot.py` does it (DEBUG)."""
    client: ConsoleClient = await console({"log": {"level": "DEBUG"}})
    settings = client.app.settings
    setup_logging(settings.log.level, settings.log.file, secrets=collect_secrets(settings))
    yield client
    restore_logging()


def restore_logging() -> None:
    logger.remove()
    logger.add(sys.stderr)
    set_secrets([], replace=True)
    logger.configure(patcher=_no_patch)


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def marker(name: str) -> str:
    """A text no other log line holds (the ring is shared by every test in the process)."""
    return f"{name}-{time.monotonic_ns()}"


class Stream:
    """An open /logs/stream: its events as (event type, data) and its comment lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[tuple[str, str, Any]] = []  # (event, id, data)
        self.comments: list[str] = []
        self.ended = False
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        event, ident, data = "message", "", ""
        try:
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        self.events.append((event, ident, json.loads(data)))
                    event, ident, data = "message", "", ""
                elif line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("data: "):
                    assert not data, "one data: line per event"
                    data = line.removeprefix("data: ")
                elif line.startswith("id: "):
                    ident = line.removeprefix("id: ")
                elif line.startswith("event: "):
                    event = line.removeprefix("event: ")
        except aiohttp.ClientError:
            pass
        self.ended = True

    def texts(self) -> list[str]:
        return [data["text"] for event, _, data in self.events if event == "message"]

    def has(self, text: str) -> bool:
        return any(text in line for line in self.texts())

    async def close(self) -> None:
        self.response.close()
        self._reader.cancel()


@pytest.fixture
async def open_stream(logged: ConsoleClient) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Stream] = []

    async def open_(query: str = "", **kwargs: Any) -> Stream:
        response = await logged.http.get(f"{logged.base}/logs/stream{query}", **kwargs)
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = Stream(response)
        opened.append(stream)
        return stream

    yield open_
    for stream in opened:
        await stream.close()


# --- the page -----------------------------------------------------------------------------------


async def test_the_page_shows_recent_lines_escaped_and_without_secrets(
    logged: ConsoleClient, fake_llm: FakeOpenAI
) -> None:
    mirai = FakeMirai(mirai_url(logged.app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    try:
        fake_llm.fail_key(API_KEY, 401)  # the provider's error echoes the key; the bot logs it
        seen = len(mirai.commands)
        await mirai.push(friend_message(20001, "你好", 901))
        [reply] = [sent_text(c) for c in (await mirai.wait_commands(seen + 1))[seen:]]
        assert API_KEY not in reply
    finally:
        await mirai.close()
    tag = marker("page")
    logger.bind(adapter="web").warning("{} password={} key={}", tag, PASSWORD, API_KEY)
    try:
        raise RuntimeError(f"verifyKey {VERIFY_KEY} refused")
    except RuntimeError:
        logger.opt(exception=True).error("{} failed", tag)
    logger.info("{} <script>alert(1)</script>", tag)
    status, page = await logged.get("/logs")
    assert status == 200 and 'id="log-lines"' in page and "/static/logs.js" in page
    assert f"{tag} password=*** key=***" in page
    assert "verifyKey *** refused" in page  # the traceback's text, redacted
    assert "Incorrect API key" in page or "401" in page  # the bot's own line about the failed request
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page.split("<main>", 1)[1]  # no inline script
    no_secret_in(page)


async def test_the_level_filter_is_applied_by_the_server(logged: ConsoleClient) -> None:
    tag = marker("level")
    logger.debug("{} debug", tag)
    logger.info("{} info", tag)
    logger.warning("{} warning", tag)
    logger.error("{} error", tag)
    _, page = await logged.get("/logs")
    assert all(f"{tag} {name}" in page for name in ("debug", "info", "warning", "error"))
    _, page = await logged.get("/logs?level=warning")
    assert f"{tag} warning" in page and f"{tag} error" in page
    assert f"{tag} info" not in page and f"{tag} debug" not in page
    assert '<option value="WARNING" selected>' in page
    status, text = await logged.get("/logs?level=LOUD")
    assert status == 400 and "unknown level" in text and "\n" not in text.strip()


# --- the live tail ------------------------------------------------------------------------------


async def test_the_stream_sends_each_new_line_redacted(logged: ConsoleClient, open_stream: Callable[..., Any]) -> None:
    stream: Stream = await open_stream()
    tag = marker("live")
    logger.bind(adapter="mirai").info("{} verifyKey={} password={}", tag, VERIFY_KEY, PASSWORD)
    await eventually(lambda: stream.has(tag))
    [line] = [text for text in stream.texts() if tag in text]
    assert f"{tag} verifyKey=*** password=***" in line and "| INFO    | mirai" in line
    try:
        raise ValueError(f"{API_KEY} rejected")
    except ValueError:
        logger.opt(exception=True).error("{} traceback", tag)
    await eventually(lambda: stream.has(f"{tag} traceback"))
    [entry] = [text for text in stream.texts() if f"{tag} traceback" in text]
    assert "Traceback" in entry and "*** rejected" in entry  # one event, newlines inside the JSON
    for _, _, data in stream.events:
        no_secret_in(json.dumps(data, ensure_ascii=False))


async def test_the_stream_filters_by_level(logged: ConsoleClient, open_stream: Callable[..., Any]) -> None:
    stream: Stream = await open_stream("?level=ERROR")
    tag = marker("filtered")
    logger.warning("{} warning", tag)
    logger.error("{} error", tag)
    await eventually(lambda: stream.has(f"{tag} error"))
    assert not stream.has(f"{tag} warning")
    assert all(data["levelno"] >= 40 for _, _, data in stream.events)
    async with logged.http.get(logged.base + "/logs/stream?level=NOISE") as response:
        assert response.status == 400


async def test_the_stream_continues_where_the_page_ended(
    logged: ConsoleClient, open_stream: Callable[..., Any]
) -> None:
    tag = marker("resume")
    logger.info("{} before", tag)
    _, page = await logged.get("/logs")
    position = re.search(r'data-after="([^"]+)"', page)
    assert position is not None and f"{tag} before" in page
    logger.info("{} between", tag)  # logged after the page, before the stream opened
    stream: Stream = await open_stream(f"?after={position.group(1)}")
    logger.info("{} after", tag)
    await eventually(lambda: stream.has(f"{tag} after"))
    assert stream.has(f"{tag} between") and not stream.has(f"{tag} before")
    # a browser reconnecting sends the last id it saw, and gets only what came since
    last_id = next(ident for _, ident, data in stream.events if f"{tag} between" in data["text"])
    again: Stream = await open_stream(headers={"Last-Event-ID": last_id})
    await eventually(lambda: again.has(f"{tag} after"))
    assert not again.has(f"{tag} between")
    # after a restart the numbering is new: every kept line is sent again rather than skipped
    other_boot: Stream = await open_stream("?after=00000000-999999999")
    await eventually(lambda: other_boot.has(f"{tag} before"))
    for bad in ("?after=abc", "?after=1-x", "?after=" + "1" * 40 + "-1"):
        async with logged.http.get(logged.base + "/logs/stream" + bad) as response:
            assert response.status == 400, bad


async def test_a_quiet_stream_is_pinged(
    logged: ConsoleClient, open_stream: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "PING_SECONDS", 0.05)
    monkeypatch.setattr(logs, "POLL_SECONDS", 0.02)
    stream: Stream = await open_stream("?level=ERROR")
    await eventually(lambda: ": ping" in stream.comments)


async def test_the_stream_ends_when_the_client_goes(
    logged: ConsoleClient, open_stream: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "POLL_SECONDS", 0.02)
    before = RING.followers
    stream: Stream = await open_stream()
    await eventually(lambda: RING.followers == before + 1)
    await stream.close()
    await eventually(lambda: RING.followers == before)  # the server noticed and let go of it


async def test_the_stream_ends_when_the_server_stops(logged: ConsoleClient, open_stream: Callable[..., Any]) -> None:
    stream: Stream = await open_stream()
    logger.info("{} hello", marker("stop"))
    await eventually(lambda: stream.texts())
    started = time.monotonic()
    await logged.app.stop()
    assert time.monotonic() - started < 1.5  # not held for the server's shutdown timeout
    await eventually(lambda: stream.ended)


async def test_a_slow_reader_loses_its_oldest_lines_with_a_notice_and_logging_goes_on(logged: ConsoleClient) -> None:
    follower, _ = RING.follow(capacity=5)  # a reader that never reads
    tag = marker("flood")
    started = time.monotonic()
    for i in range(2000):
        logger.info("{} {}", tag, i)
    assert time.monotonic() - started < 5  # logging never waited for the reader
    lines, dropped = await follower.next(0.1)
    assert [line.text.rsplit(" ", 1)[1] for line in lines] == ["1995", "1996", "1997", "1998", "1999"]
    assert dropped == 1995
    RING.unfollow(follower)
    assert logs._notice(dropped).startswith(b"event: notice\ndata: ")
    assert "省略了 1995 行" in logs._notice(dropped).decode()


async def test_a_reload_keeps_one_ring_sink_and_the_followers(
    logged: ConsoleClient, open_stream: Callable[..., Any]
) -> None:
    stream: Stream = await open_stream()
    outcome = await logged.app.reload()  # runs setup_logging again
    assert "已重新加载" in outcome
    tag = marker("reloaded")
    logger.info("{} key={}", tag, API_KEY)
    await eventually(lambda: stream.has(tag))
    assert sum(tag in text for text in stream.texts()) == 1  # one sink, not two
    lines, _ = RING.recent()
    assert sum(tag in line.text for line in lines) == 1
    assert not any(API_KEY in line.text for line in lines)


async def test_the_ring_is_fed_with_a_log_file_too(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "bot.log"
    try:
        setup_logging("INFO", str(log_file), secrets=["ring-file-secret-0123"])
        tag = marker("file")
        logger.info("{} ring-file-secret-0123", tag)
        logger.debug("{} below the level", tag)
        lines, _ = RING.recent()
        assert [line.text.split(" | ", 2)[2] for line in lines if tag in line.text] == [f"- {tag} ***"]
        logger.complete()
    finally:
        restore_logging()
    assert f"{tag} ***" in log_file.read_text(encoding="utf-8")


def test_the_ring_keeps_the_last_lines_only() -> None:
    from core.log import LogRing

    ring = LogRing(size=3)
    for i in range(5):
        ring.write(f"line {i}\n")
    lines, last = ring.recent()
    assert [line.text for line in lines] == ["line 2", "line 3", "line 4"] and last == 5


async def test_log_routes_need_a_login(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    for path in ("/logs", "/logs/stream"):
        async with client.http.get(client.base + path, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"].startswith("/login"), path
    status, _ = await client.post("/logs", csrf=False)
    assert status in (401, 403, 405)


# --- in a real browser --------------------------------------------------------------------------


async def test_the_page_follows_live_and_filters_in_a_browser(logged: ConsoleClient, browser: Browser) -> None:
    page = await logged_in_page(browser, logged)
    errors: list[str] = []  # the page's own script failing
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(logged.base + "/logs")
    await expect(page.locator("#log-state")).to_contain_text("实时")
    tag = marker("browser")
    logger.info("{} info password={}", tag, PASSWORD)
    logger.error("{} error", tag)
    lines = page.locator("#log-lines li")
    await expect(lines.filter(has_text=f"{tag} error")).to_have_count(1)
    await expect(lines.filter(has_text=f"{tag} info password=***")).to_be_visible()
    await page.select_option("#log-level", "ERROR")  # stricter: hidden in the page, no reload
    await expect(lines.filter(has_text=f"{tag} info")).to_be_hidden()
    await expect(lines.filter(has_text=f"{tag} error")).to_be_visible()
    logger.warning("{} later warning", tag)
    logger.error("{} later error", tag)
    await expect(lines.filter(has_text=f"{tag} later error")).to_have_count(1)
    await expect(lines.filter(has_text=f"{tag} later warning")).to_have_count(0)  # filtered by the server
    await page.select_option("#log-level", "")  # wider: the page reloads to fetch what it lacked
    await page.wait_for_url(logged.base + "/logs")
    await expect(lines.filter(has_text=f"{tag} later warning")).to_have_count(1)
    no_secret_in(await page.content())
    assert errors == []
