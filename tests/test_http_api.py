"""v2's HTTP API (`[http]`) through real sockets: v2's request and response shapes, token, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.config import load_config
from core.errors import ConfigError
from tests.conftest import eventually, free_port, spawn_bot, start_bot
from tests.fakes.openai_server import FakeOpenAI

SAMPLES = Path(__file__).parent / "samples" / "v2_http"
TOKEN = "http-test-token"


def shape(body: dict[str, Any]) -> None:
    """Every answer has v2's four keys, the lists always lists."""
    assert set(body) == {"result", "message", "voice", "image"}
    assert all(isinstance(body[key], list) for key in ("message", "voice", "image"))


class Api:
    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.base = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession()

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, str]:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        async with self.http.post(self.base + path, data=data, **kwargs) as response:
            return response.status, await response.text()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with self.http.get(self.base + path, **kwargs) as response:
            return response.status, await response.text()


@pytest.fixture
async def launch(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    apis: list[Api] = []

    async def make(http: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Api:
        port = free_port()
        app = await start_bot(write_config({"http": {"port": port, **(http or {})}, "mirai": None, **(extra or {})}))
        api = Api(app, port)
        apis.append(api)
        return api

    yield make
    for api in apis:
        await api.http.close()
        await api.app.stop()


async def test_v1_chat_round_trip_with_v2_shapes(launch: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    api = await launch()
    request = json.loads((SAMPLES / "v1_request.json").read_text(encoding="utf-8"))
    status, text = await api.post("/v1/chat", request)
    body = json.loads(text)
    assert status == 200
    shape(body)
    assert body == {"result": "DONE", "message": ["echo: 你好"], "voice": [], "image": []}
    assert fake_llm.requests[-1]["body"]["messages"][-1] == {"role": "user", "content": "你好"}
    # the session keeps its history across requests, as a private chat does
    status, text = await api.post("/v1/chat", {**request, "message": "第二句"})
    assert json.loads(text)["message"] == ["echo: 第二句"]
    assert {"role": "assistant", "content": "echo: 你好"} in fake_llm.requests[-1]["body"]["messages"]
    # v2's answer to an empty message, and its defaults for a missing session and name
    status, text = await api.post("/v1/chat", {"message": "  "})
    assert (status, json.loads(text)) == (200, json.loads((SAMPLES / "v1_response_empty_message.json").read_text()))
    status, text = await api.post("/v1/chat", {"message": "没有名字"})
    assert json.loads(text)["message"] == ["echo: 没有名字"]


async def test_concurrent_sessions_each_get_their_own_answer(launch: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    api = await launch()
    fake_llm.latency = 0.2
    answers = await asyncio.gather(
        *(api.post("/v1/chat", {"session_id": f"friend-{n}", "message": f"问题{n}"}) for n in range(5))
    )
    assert [json.loads(text)["message"] for _, text in answers] == [[f"echo: 问题{n}"] for n in range(5)]
    assert not api.app.adapters["http"]._waiting  # type: ignore[attr-defined]


async def test_v2_chat_is_polled_until_done(launch: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    api = await launch()
    fake_llm.latency = 0.5  # the first polls come before the answer
    status, request_id = await api.post("/v2/chat", {"session_id": "friend-9", "username": "李四", "message": "在吗"})
    assert status == 200 and request_id.isdigit()
    parts: list[str] = []
    results: list[str] = []

    async def poll() -> bool:
        _, text = await api.get("/v2/chat/response", params={"request_id": request_id})
        body = json.loads(text)
        shape(body)
        parts.extend(body["message"])
        results.append(body["result"])
        return body["result"] == "DONE"

    for _ in range(200):
        if await poll():
            break
        await asyncio.sleep(0.05)
    assert parts == ["echo: 在吗"]
    assert results[0] == "SUCCESS" and results[-1] == "DONE"
    # a finished request is forgotten, as v2 did
    _, text = await api.get("/v2/chat/response", params={"request_id": request_id})
    assert json.loads(text) == json.loads((SAMPLES / "v2_response_unknown.json").read_text(encoding="utf-8"))


async def test_a_slow_answer_in_several_parts_comes_back_whole(
    launch: Callable[..., Any], fake_llm: FakeOpenAI
) -> None:
    # Parts go out as they are written (buffer_delay 0) with pauses between them: the request
    # ends when the bot says the answer is finished, not when the parts pause.
    api = await launch(extra={"response": {"buffer_delay": 0}})
    fake_llm.reply_fn = lambda body: "第一段。\n\n第二段。\n\n第三段。"
    fake_llm.chunk_chars, fake_llm.chunk_delay = 4, 0.3
    status, text = await api.post("/v1/chat", {"session_id": "friend-5", "message": "慢慢说"})
    body = json.loads(text)
    assert status == 200 and body["result"] == "DONE"
    assert "\n\n".join(body["message"]) == "第一段。\n\n第二段。\n\n第三段。"
    assert len(body["message"]) > 1  # they really were separate messages


async def test_a_command_during_an_answer_gets_its_own_reply(launch: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    api = await launch()
    fake_llm.latency = 1.0
    chat = asyncio.ensure_future(api.post("/v1/chat", {"session_id": "friend-6", "message": "慢问题"}))
    await eventually(lambda: len(fake_llm.requests) == 1)
    status, text = await api.post("/v1/chat", {"session_id": "friend-6", "message": "ping"})
    ping = json.loads(text)
    assert status == 200 and ping["result"] == "DONE" and not chat.done()
    [line] = ping["message"]
    assert line.startswith("当前账号：")
    status, text = await chat
    assert json.loads(text) == {"result": "DONE", "message": ["echo: 慢问题"], "voice": [], "image": []}


async def test_messages_the_bot_ignores_or_refuses_end_at_once(launch: Callable[..., Any]) -> None:
    api = await launch(extra={"trigger": {"ignore_regex": ["^忽略"]}})
    assert api.app.adapters["http"].max_wait > 600  # the safety net is not what ends these
    async with asyncio.timeout(10):
        status, text = await api.post("/v1/chat", {"session_id": "friend-7", "message": "忽略我"})
        assert (status, json.loads(text)["result"]) == (200, "FAILED")
        await api.app.manager.admin.set_limit("user", "friend-7", 0)
        status, text = await api.post("/v1/chat", {"session_id": "friend-7", "message": "超额了"})
        assert json.loads(text) == {
            "result": "DONE",
            "message": ["已达到额度限制，请等待下一小时继续和我对话。"],
            "voice": [],
            "image": [],
        }
    assert not api.app.adapters["http"]._waiting  # type: ignore[attr-defined]


async def test_drawing_comes_back_as_a_base64_image(launch: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    account = {"name": "p", "api_key": "sk-a", "api_endpoint": fake_llm.base_url, "image_model": "dall-e-3"}
    api = await launch(extra={"openai": {"accounts": [account]}})
    _, text = await api.post("/v1/chat", {"session_id": "friend-1", "message": "画 一只猫"})
    body = json.loads(text)
    assert body["result"] == "DONE" and body["message"] == []
    [image] = body["image"]
    prefix = "data:image/png;base64,"
    assert image.startswith(prefix) and base64.b64decode(image[len(prefix) :]).startswith(b"\x89PNG")


async def test_token_is_checked(launch: Callable[..., Any]) -> None:
    api = await launch({"token": TOKEN})
    request = {"session_id": "friend-1", "message": "你好"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, text = await api.post("/v1/chat", request, headers=headers)
        assert status == 401
        assert json.loads(text)["result"] == "FAILED"
    status, _ = await api.get("/v2/chat/response", params={"request_id": "1"})
    assert status == 401
    status, text = await api.post("/v1/chat", request, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(text)["message"] == ["echo: 你好"]
    status, request_id = await api.post("/v2/chat?token=" + TOKEN, request)
    assert status == 200 and request_id.isdigit()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b'{"message": 42}',
        b'{"session_id": [], "message": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
async def test_bad_requests_get_400_in_v2_shape(launch: Callable[..., Any], body: bytes) -> None:
    api = await launch()
    for path in ("/v1/chat", "/v2/chat"):
        status, text = await api.post(path, body)
        assert status == 400
        parsed = json.loads(text)
        shape(parsed)
        assert parsed["result"] == "FAILED" and parsed["message"]
    assert api.app.adapters["http"].status().healthy


def test_token_required_beyond_loopback(write_config: Callable[..., Path]) -> None:
    config = write_config({"http": {"host": "0.0.0.0", "port": free_port()}, "mirai": None})
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    line = caught.value.one_line()
    assert "http.token" in line and "\n" not in line
    load_config(write_config({"http": {"host": "0.0.0.0", "port": free_port(), "token": TOKEN}, "mirai": None}))
    load_config(write_config({"http": {"host": "localhost"}, "mirai": None}))


async def test_bot_py_runs_with_only_http(write_config: Callable[..., Path]) -> None:
    port = free_port()
    process = await spawn_bot(write_config({"http": {"port": port}, "mirai": None}))
    try:
        async with aiohttp.ClientSession() as http:
            answers: list[dict[str, Any]] = []

            async def answered() -> bool:
                if process.returncode is not None:
                    return True
                try:
                    async with http.post(f"http://127.0.0.1:{port}/v1/chat", json={"message": "你好"}) as response:
                        answers.append(await response.json(content_type=None))
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
                    return False
                return True

            async with asyncio.timeout(30):
                while not await answered():
                    pass
        assert process.returncode is None, (await process.communicate())[1].decode()[-2000:]
        assert answers[-1]["message"] == ["echo: 你好"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
