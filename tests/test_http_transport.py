"""The aiohttp transport under the openai client: proxies from the environment, errors, encodings."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx2
import openai
import pytest
from aiohttp import web

from llm.http_transport import AiohttpTransport
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
async def slow_and_gzip_server() -> AsyncIterator[str]:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(b'{"ok": "\xe4\xbd\xa0\xe5\xa5\xbd"}')
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/gzip", gzipped)
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site.port}"
    await runner.cleanup()


async def test_environment_proxy_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOpenAI()
    base = await fake.start()
    monkeypatch.setenv("HTTP_PROXY", base.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = openai.AsyncOpenAI(
        api_key="k",
        base_url="http://llm.invalid/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=AiohttpTransport()),
    )
    try:
        reply = await client.post(
            "/chat/completions", body={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, cast_to=object
        )
        assert reply["choices"][0]["message"]["content"] == "echo: hi"  # type: ignore[index]
    finally:
        await client.close()
        await fake.stop()


async def test_no_proxy_bypasses_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOpenAI()
    base = await fake.start()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = openai.AsyncOpenAI(
        api_key="k", base_url=base, max_retries=0, http_client=httpx2.AsyncClient(transport=AiohttpTransport())
    )
    try:
        reply = await client.post("/chat/completions", body={"model": "m", "messages": []}, cast_to=object)
        assert reply["object"] == "chat.completion"  # type: ignore[index]
    finally:
        await client.close()
        await fake.stop()


async def test_read_timeout_and_refused_connection_become_httpx_errors(slow_and_gzip_server: str) -> None:
    async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=0.3) as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(f"{slow_and_gzip_server}/slow")
        with pytest.raises(httpx2.ConnectError):
            await client.get("http://127.0.0.1:9/")


async def test_compressed_body_is_decoded_once(slow_and_gzip_server: str) -> None:
    async with httpx2.AsyncClient(transport=AiohttpTransport()) as client:
        response = await client.get(f"{slow_and_gzip_server}/gzip")
        assert response.json() == {"ok": "你好"}


def test_socks_proxy_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="http"):
        AiohttpTransport("socks5://127.0.0.1:1080")
