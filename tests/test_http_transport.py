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
from tests.fakes.socks_proxy import ConnectRequest, FakeSocks5


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


@pytest.mark.parametrize(
    "proxy", ["ftp://user:hunter2@proxy:21", "user:hunter2@proxy:1080", "socks5://user:hunter2", "socks5h://:hunter2@"]
)
def test_unusable_proxy_is_refused_without_echoing_the_password(proxy: str) -> None:
    with pytest.raises(ValueError, match="socks5") as caught:
        AiohttpTransport(proxy)
    assert "hunter2" not in str(caught.value)
    assert caught.value.__suppress_context__ or caught.value.__context__ is None  # nor in a chained traceback


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


async def _chat_through(proxy: str, base_url: str) -> object:
    """One chat completion through `proxy` with the openai SDK, as the bot sends it."""
    client = openai.AsyncOpenAI(
        api_key="k", base_url=base_url, max_retries=0, http_client=httpx2.AsyncClient(transport=AiohttpTransport(proxy))
    )
    try:
        return await client.post(
            "/chat/completions", body={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, cast_to=object
        )
    finally:
        await client.close()


async def _socks_proxy(**credentials: str) -> tuple[FakeSocks5, int]:
    proxy = FakeSocks5(**credentials)
    return proxy, await proxy.start()


async def test_socks5_proxy_carries_the_request(fake_openai: FakeOpenAI) -> None:
    proxy, port = await _socks_proxy()
    try:
        reply = await _chat_through(f"socks5://127.0.0.1:{port}", fake_openai.base_url)
        assert reply["choices"][0]["message"]["content"] == "echo: hi"  # type: ignore[index]
        target = httpx2.URL(fake_openai.base_url).port
        assert target is not None
        assert proxy.requests == [ConnectRequest("127.0.0.1", target, by_name=False)]
    finally:
        await proxy.stop()


async def test_socks5_proxy_with_username_and_password(fake_openai: FakeOpenAI) -> None:
    proxy, port = await _socks_proxy(username="alice", password="p@ss:word")
    try:
        # percent-encoded as in any URL; the proxy must see the decoded password
        reply = await _chat_through(f"socks5://alice:p%40ss%3Aword@127.0.0.1:{port}", fake_openai.base_url)
        assert reply["object"] == "chat.completion"  # type: ignore[index]
        assert len(proxy.requests) == 1
        assert proxy.auth_failures == 0
    finally:
        await proxy.stop()


async def test_wrong_socks_password_is_a_connection_error(fake_openai: FakeOpenAI) -> None:
    proxy, port = await _socks_proxy(username="alice", password="right")
    try:
        with pytest.raises(openai.APIConnectionError) as caught:
            await _chat_through(f"socks5://alice:wrong@127.0.0.1:{port}", fake_openai.base_url)
        assert not isinstance(caught.value, openai.APITimeoutError)
        assert proxy.auth_failures == 1
        assert proxy.requests == []
        assert fake_openai.requests == []
    finally:
        await proxy.stop()


async def test_socks5h_lets_the_proxy_resolve_and_socks5_resolves_locally(fake_openai: FakeOpenAI) -> None:
    base_url = fake_openai.base_url.replace("127.0.0.1", "localhost")
    proxy, port = await _socks_proxy()
    try:
        await _chat_through(f"socks5h://127.0.0.1:{port}", base_url)
        await _chat_through(f"SOCKS5://127.0.0.1:{port}", base_url)  # schemes are case-insensitive
        remote, local = proxy.requests
        assert (remote.host, remote.by_name) == ("localhost", True)
        assert not local.by_name
        assert local.host == "127.0.0.1"
    finally:
        await proxy.stop()


async def test_socks_proxy_not_listening_is_a_connection_error(fake_openai: FakeOpenAI) -> None:
    proxy, port = await _socks_proxy()
    await proxy.stop()  # the port was free a moment ago and nothing listens on it now
    with pytest.raises(openai.APIConnectionError) as caught:
        await _chat_through(f"socks5://127.0.0.1:{port}", fake_openai.base_url)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)


async def test_socks_proxy_that_never_answers_is_a_connect_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # kept referenced, so the connection stays open without a reply

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = AiohttpTransport(f"socks5://127.0.0.1:{port}")
        async with httpx2.AsyncClient(transport=transport, timeout=0.3) as client:
            with pytest.raises(httpx2.ConnectTimeout):  # the openai SDK turns it into APITimeoutError
                await client.get("http://127.0.0.1:9/")
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()


async def test_no_hidden_connection_cap_below_the_pools_concurrency() -> None:
    """aiohttp's default connector queued everything past 100 connections; 150 must all be in flight."""
    wanted = 150
    arrived = 0
    all_in = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived == wanted:
            all_in.set()
        await all_in.wait()  # answers only once every request is at the server at the same time
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/held", held)
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    # the client the backend builds: the SDK's httpx2 subclass around our transport
    client = openai.DefaultAsyncHttpxClient(transport=AiohttpTransport(), timeout=10)
    try:
        url = f"http://127.0.0.1:{site.port}/held"
        responses = await asyncio.wait_for(asyncio.gather(*(client.get(url) for _ in range(wanted))), 10)
        assert [r.text for r in responses] == ["ok"] * wanted
    finally:
        await client.aclose()
        await runner.cleanup()
