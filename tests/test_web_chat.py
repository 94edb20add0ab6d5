"""The console's chat page as a platform: the same pipeline as QQ, answers streamed to the page as SSE."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tests.conftest import eventually
from tests.console_client import ConsoleClient, console
from tests.fakes.openai_server import FakeOpenAI

__all__ = ["console"]


class Events:
    """The chat page's event stream, read like EventSource does."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        kind = ""
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                self.received.append((kind, json.loads(line.removeprefix("data: "))))

    def of(self, reply_to: str) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, data) for kind, data in self.received if data.get("reply_to") == reply_to]

    async def answer(self, reply_to: str) -> list[tuple[str, dict[str, Any]]]:
        await eventually(lambda: any(kind == "done" for kind, _ in self.of(reply_to)), timeout=10)
        return self.of(reply_to)


@asynccontextmanager
async def events(client: ConsoleClient) -> AsyncIterator[Events]:
    async with client.http.get(client.base + "/chat/stream") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        stream = Events(response)
        try:
            yield stream
        finally:
            stream.task.cancel()


async def say(client: ConsoleClient, text: str) -> str:
    status, body = await client.post("/chat/send", {"text": text})
    assert status == 200, body
    message_id: str = json.loads(body)["id"]
    return message_id


async def test_a_streamed_answer_reaches_the_page_live_then_whole(
    console: Callable[..., Any], fake_llm: FakeOpenAI
) -> None:
    client: ConsoleClient = await console({"openai": {"gpt_params": {"stream": True}}})
    fake_llm.reply_fn = lambda body: "第一段，慢慢写出来。\n\n第二段。"
    fake_llm.chunk_chars, fake_llm.chunk_delay = 3, 0.05
    async with events(client) as stream:
        message_id = await say(client, "你好")
        answer = await stream.answer(message_id)
    drafts = [data["text"] for kind, data in answer if kind == "draft"]
    assert len(drafts) > 2 and drafts[-1] == "第一段，慢慢写出来。\n\n第二段。"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(drafts))
    messages = [data["text"] for kind, data in answer if kind == "message"]
    assert "\n\n".join(messages) == "第一段，慢慢写出来。\n\n第二段。"
    assert answer[-1][0] == "done"
    # the exchange is in the history, and the page shows it next time
    status, page = await client.get("/chat")
    assert status == 200 and "你好" in page and "第二段。" in page


async def test_commands_work_and_the_console_user_is_the_manager(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    async with events(client) as stream:
        [(_, ping), (done, _)] = await stream.answer(await say(client, "ping"))
        assert ping["text"].startswith("当前账号：") and done == "done"
        answer = await stream.answer(await say(client, ".状态"))  # admin only: silent for others
        assert answer[0][0] == "message" and "运行" in answer[0][1]["text"]


async def test_a_drawing_arrives_as_an_image(console: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    account = {"name": "p", "api_key": "sk-a", "api_endpoint": fake_llm.base_url, "image_model": "dall-e-3"}
    client: ConsoleClient = await console({"openai": {"accounts": [account]}})
    async with events(client) as stream:
        answer = await stream.answer(await say(client, "画 一只猫"))
    [image] = next(data for kind, data in answer if kind == "message")["images"]
    assert image.startswith("data:image/png;base64,")


async def test_bad_sends_are_refused(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    for text in ("", "   ", "长" * 10_001):
        status, body = await client.post("/chat/send", {"text": text})
        assert status == 400 and "error" in json.loads(body)
    status, _ = await client.post("/chat/send", {"text": "hi"}, csrf=False)
    assert status == 403


async def test_the_chat_page_is_not_a_platform_link(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    async with client.http.get(client.base + "/healthz") as response:
        report = await response.json()
    assert [p["platform"] for p in report["platforms"]] == ["mirai"]


async def test_the_stream_needs_a_login_and_ends_when_the_bot_stops(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(client.base + "/chat/stream", allow_redirects=False) as response,
    ):
        assert response.status == 303
    async with client.http.get(client.base + "/chat/stream") as response:
        assert response.status == 200
        await client.app.adapters["web"].stop()
        async with asyncio.timeout(5):
            await response.read()  # the stream ends instead of hanging
