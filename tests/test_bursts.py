"""Bursts and the hot path: per-account concurrency only, the slot-wait notice, cached requests, lean SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from core.config import ConversationSettings, OpenAISettings
from llm.base import AllAccountsFailed, ChatTurn
from llm.openai_compat import OpenAICompatible
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

THINKING = "我还在思考中，请再等一下~"
HOLD, DROP = b"<hold>", b"<drop>"  # scripted server behaviours inside an SSE body


@pytest.fixture
async def launch(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> AsyncIterator[Callable[..., Any]]:
    """Start a bot whose one account allows `account_concurrency` requests at once."""
    running: list[tuple[Any, FakeMirai]] = []

    async def start(account_concurrency: int, extra: dict[str, Any] | None = None) -> FakeMirai:
        account = {
            "name": "main",
            "api_key": "sk-test-1",
            "api_endpoint": fake_llm.base_url,
            "model": "m1",
            "max_concurrency": account_concurrency,
        }
        config = write_config({"openai": {"accounts": [account]}, **(extra or {})})
        app = await start_bot(config)
        mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
        await mirai.connect()
        running.append((app, mirai))
        return mirai

    yield start
    for app, mirai in running:
        await mirai.close()
        await app.stop()


def texts_to(mirai: FakeMirai, user: int) -> list[str]:
    return [
        sent_text(c)
        for c in mirai.commands
        if c["command"] == "sendFriendMessage" and int(c["content"]["target"]) == user
    ]


def test_the_global_cap_is_off_by_default() -> None:
    # a lower global cap (16) used to hide the accounts' own max_concurrency
    assert ConversationSettings().max_concurrency == 0


async def test_account_concurrency_is_the_only_cap(launch: Any, fake_llm: FakeOpenAI) -> None:
    mirai = await launch(24)
    fake_llm.latency = 0.5
    users = range(21000, 21024)
    for n, user in enumerate(users):
        await mirai.push(friend_message(user, f"问题{n}", 500 + n))
    await eventually(lambda: all(texts_to(mirai, user) for user in users), timeout=10)
    # all 24 ran at once: more than the old global default of 16, nothing queued behind a hidden cap
    assert fake_llm.peak_in_flight == 24


async def test_a_user_waiting_for_a_model_slot_longer_than_timeout_gets_the_notice(
    launch: Any, fake_llm: FakeOpenAI
) -> None:
    mirai = await launch(2, {"response": {"timeout": 1.0, "max_timeout": 30}})
    fake_llm.latency = 0.6  # shorter than `timeout`: a user who gets a slot at once hears no notice
    for n, user in enumerate((22001, 22002, 22003)):
        await mirai.push(friend_message(user, f"问题{n}", 600 + n))
        if n == 1:
            await eventually(lambda: fake_llm.in_flight == 2)  # the first two hold both slots
    await eventually(lambda: len(texts_to(mirai, 22003)) == 2, timeout=10)
    # the third waited ~0.6 s for a slot and then ~0.6 s for the model: over `timeout`, so it was told
    assert texts_to(mirai, 22003) == [THINKING, "echo: 问题2"]
    assert texts_to(mirai, 22001) == ["echo: 问题0"]
    assert texts_to(mirai, 22002) == ["echo: 问题1"]
    assert fake_llm.peak_in_flight == 2


# --- the per-message hot path: cached request building and the lean SSE reader ------------------


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[list[bytes]], list[bool]]]:
    """A chat completions endpoint that records each request and answers with the next scripted
    SSE body, written piece by piece so line ends and events fall across network reads."""
    seen: list[dict[str, Any]] = []
    bodies: list[list[bytes]] = []
    held: list[bool] = []  # per HOLD: whether the client closed the connection while the server held it

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append({"headers": dict(request.headers), "body": await request.json()})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in bodies.pop(0):
            if piece == HOLD:  # a server that keeps the stream open: only the client ends it
                for _ in range(200):  # at most 2 s (less than the client read timeout), then it gives up
                    if request.transport is None or request.transport.is_closing():
                        break
                    await asyncio.sleep(0.01)
                held.append(request.transport is None or request.transport.is_closing())
                return response
            if piece == DROP:  # a server or proxy dropping the connection
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(piece)
            await asyncio.sleep(0.005)  # separate reads on the client side, not a wait for an outcome
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", seen, bodies, held
    await runner.cleanup()


def chunk(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}, ensure_ascii=False).encode()


def backend_on(url: str) -> OpenAICompatible:
    settings = OpenAISettings.model_validate(
        {
            "accounts": [{"name": "raw", "api_key": "sk-raw-key", "model": "m1", "api_endpoint": url}],
            "gpt_params": {"stream": True, "timeout": 5.0},
            "max_retries": 0,
        }
    )
    return OpenAICompatible(settings)


async def test_later_requests_send_exactly_the_headers_the_sdk_built_for_the_first(raw_server: Any) -> None:
    url, seen, bodies, _ = raw_server
    model = backend_on(url)
    try:
        for n in range(3):
            bodies.append([b"data: " + chunk(f"答{n}") + b"\n\n", b"data: [DONE]\n\n"])
            reply = await model.complete([ChatTurn("user", f"问题{n}")])
            assert reply.text == f"答{n}"
    finally:
        await model.close()
    first = {k: v for k, v in seen[0]["headers"].items() if k.lower() != "content-length"}
    for later in seen[1:]:
        assert {k: v for k, v in later["headers"].items() if k.lower() != "content-length"} == first
    assert first["Authorization"] == "Bearer sk-raw-key"
    assert [s["body"]["messages"][-1]["content"] for s in seen] == ["问题0", "问题1", "问题2"]


async def test_the_stream_reader_joins_lines_split_across_reads_in_every_line_ending(raw_server: Any) -> None:
    url, _, bodies, _ = raw_server
    first, second, third = chunk("你好"), chunk("，世界"), chunk("！")
    bodies.append(
        [
            b": keep-alive comment\r\n\r\n",
            b"event: ping\r\n\r\n",  # an event without data: skipped, not a JSON error
            b"data: " + first[:7],
            first[7:] + b"\r",  # CR ... LF across two reads is one line end
            b"\n\r\n",
            b"data: " + second + b"\r\r",  # CR-only line ends
            b"data: " + third + b"\n\ndata: [DO",
            b"NE]\n\n",
            b"data: " + chunk("[DONE] 之后的不算") + b"\n\n",
        ]
    )
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    model = backend_on(url)
    try:
        reply = await model.complete([ChatTurn("user", "hi")], on_delta=on_delta)
    finally:
        await model.close()
    assert pieces == ["你好", "，世界", "！"]
    assert reply.text == "你好，世界！"


async def test_an_error_event_in_the_stream_is_a_failure_not_text(raw_server: Any) -> None:
    url, _, bodies, _ = raw_server
    error = {"error": {"message": "the request exceeds the available context size", "type": "server_error"}}
    bodies.append([b"data: " + json.dumps(error).encode() + b"\n\n"])
    model = backend_on(url)
    try:
        with pytest.raises(AllAccountsFailed) as failed:
            await model.complete([ChatTurn("user", "hi")])
    finally:
        await model.close()
    assert failed.value.kind == "context_length"


@pytest.mark.parametrize("after_done", [HOLD, DROP])
async def test_a_stream_that_is_held_open_or_dropped_after_done_is_a_whole_answer(
    raw_server: Any, after_done: bytes
) -> None:
    url, _, bodies, held = raw_server
    bodies.append([b"data: " + chunk("完整的回答") + b"\n\ndata: [DONE]\n\n", after_done])
    model = backend_on(url)
    try:
        reply = await model.complete([ChatTurn("user", "hi")])
    finally:
        await model.close()
    assert reply.text == "完整的回答"
    if after_done == HOLD:
        # the client stopped reading after a short drain and closed the connection itself
        await eventually(lambda: held == [True])
