"""ImageFetcher against a fake image server: formats by magic bytes, size/time caps, bad URLs, safe logging."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import pytest

from llm.images import ImageFetcher, sniff_mime
from tests.fakes.image_server import BIG_SIZE, JPEG_BYTES, PNG_BYTES, FakeImageServer


@pytest.fixture
async def server() -> AsyncIterator[FakeImageServer]:
    fake = FakeImageServer()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    images = ImageFetcher(timeout=2.0)
    yield images
    await images.close()


def decode(data_url: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert data_url.startswith(prefix), data_url[:40]
    return base64.b64decode(data_url[len(prefix) :], validate=True)


async def test_png_becomes_data_url_with_same_bytes(server: FakeImageServer, fetcher: ImageFetcher) -> None:
    data_url = await fetcher.fetch(server.base_url + "/cat.png")
    assert data_url is not None
    assert decode(data_url, "image/png") == PNG_BYTES


async def test_octet_stream_jpeg_is_sniffed_as_jpeg(server: FakeImageServer, fetcher: ImageFetcher) -> None:
    data_url = await fetcher.fetch(server.base_url + "/cat.jpg")
    assert data_url is not None
    assert decode(data_url, "image/jpeg") == JPEG_BYTES


def test_sniff_mime_formats() -> None:
    assert sniff_mime(b"GIF89a" + b"\x00" * 10) == "image/gif"
    assert sniff_mime(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little")) == "image/bmp"
    # "BM" alone is too weak a signal: plain text can start with it.
    assert sniff_mime(b"BMW owners club, page 1") is None
    assert sniff_mime(b"RIFF\x10\x00\x00\x00WAVEfmt ") is None
    assert sniff_mime(b"") is None


async def test_big_chunked_body_is_cut_early(server: FakeImageServer) -> None:
    fetcher = ImageFetcher(max_bytes=256 * 1024, timeout=5.0)
    try:
        started = time.monotonic()
        assert await fetcher.fetch(server.base_url + "/big.png") is None
        assert time.monotonic() - started < 2.0
    finally:
        await fetcher.close()
    # The client hung up, so the server's handler ends without having written the whole body.
    await asyncio.wait_for(server.stream_ended["/big.png"].wait(), timeout=2.0)
    assert server.stream_completed["/big.png"] is False
    assert server.streamed["/big.png"] < BIG_SIZE // 2  # the fake keeps its send buffer small, so this has slack


async def test_big_body_over_default_cap_is_refused(server: FakeImageServer, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(server.base_url + "/big.png") is None


async def test_declared_too_big_is_refused_before_the_body(server: FakeImageServer, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(server.base_url + "/big-declared.png") is None
    await asyncio.wait_for(server.stream_ended["/big-declared.png"].wait(), timeout=2.0)
    assert server.stream_completed["/big-declared.png"] is False
    assert server.streamed["/big-declared.png"] < BIG_SIZE // 2


async def test_slow_server_times_out(server: FakeImageServer) -> None:
    fetcher = ImageFetcher(timeout=0.3)
    try:
        started = time.monotonic()
        assert await fetcher.fetch(server.base_url + "/slow.png") is None
        assert time.monotonic() - started < 1.0
    finally:
        await fetcher.close()


@pytest.mark.parametrize("path", ["/missing", "/notimage", "/redirect-file"])
async def test_bad_answers_give_none(server: FakeImageServer, fetcher: ImageFetcher, path: str) -> None:
    assert await fetcher.fetch(server.base_url + path) is None


async def test_redirect_loop_is_capped(server: FakeImageServer, fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch(server.base_url + "/redirect-loop") is None
    assert server.hits["/redirect-loop"] <= 4  # the first request plus at most 3 redirects


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/cat.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://127.0.0.1:70/",
        "not a url",
        "",
    ],
)
async def test_non_http_urls_give_none(fetcher: ImageFetcher, url: str) -> None:
    assert await fetcher.fetch(url) is None


async def test_redirect_is_followed(server: FakeImageServer, fetcher: ImageFetcher) -> None:
    data_url = await fetcher.fetch(server.base_url + "/redirect")
    assert data_url is not None
    assert decode(data_url, "image/png") == PNG_BYTES
    assert server.hits["/redirect"] == 1
    assert server.hits["/cat.png"] == 1


async def test_fetch_all_keeps_order_drops_failures_and_caps(server: FakeImageServer) -> None:
    fetcher = ImageFetcher(max_images=4)
    base = server.base_url
    try:
        results = await fetcher.fetch_all(
            [base + "/cat.jpg", base + "/missing", base + "/cat.png", base + "/notimage", base + "/redirect"]
        )
    finally:
        await fetcher.close()
    assert [url.split(";", 1)[0] for url in results] == ["data:image/jpeg", "data:image/png"]
    assert server.hits["/redirect"] == 0  # the fifth URL is past max_images and never requested


async def test_fetch_all_is_concurrent(server: FakeImageServer) -> None:
    fetcher = ImageFetcher(timeout=0.3)
    base = server.base_url
    try:
        started = time.monotonic()
        results = await fetcher.fetch_all([base + "/slow.png", base + "/slow.png", base + "/cat.png"])
        elapsed = time.monotonic() - started
    finally:
        await fetcher.close()
    assert len(results) == 1
    assert elapsed < 0.55  # one after another the two slow ones alone would take 0.6 s


async def test_fetch_all_empty(fetcher: ImageFetcher) -> None:
    assert await fetcher.fetch_all([]) == []


async def test_warning_shows_host_not_query(
    server: FakeImageServer, fetcher: ImageFetcher, log_lines: list[str]
) -> None:
    assert await fetcher.fetch(server.base_url + "/missing?token=secret") is None
    # A connection error too: aiohttp's own messages could carry the URL, so they must not be logged.
    assert await fetcher.fetch("http://127.0.0.1:1/x.png?token=secret") is None
    warnings = [line for line in log_lines if "image" in line]
    assert len(warnings) == 2
    assert all("127.0.0.1" in line for line in warnings)
    assert not any("secret" in line or "token" in line for line in warnings)


async def test_close_is_idempotent_and_fetcher_reopens(server: FakeImageServer) -> None:
    fetcher = ImageFetcher()
    await fetcher.close()  # never opened: nothing to do
    assert await fetcher.fetch(server.base_url + "/cat.png") is not None
    await fetcher.close()
    await fetcher.close()
    assert await fetcher.fetch(server.base_url + "/cat.png") is not None
    await fetcher.close()
