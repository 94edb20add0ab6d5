"""Satori end to end: fake Satori server (WS with IDENTIFY/READY/PING and sn replay, HTTP API) ⇄ bot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.link import LinkState
from adapters.satori import adapter as satori_adapter
from adapters.satori.adapter import SatoriAdapter
from adapters.satori.settings import SatoriSettings
from core.event import ChatType, Event, MessageEvent, RequestEvent
from core.message import Text
from tests.conftest import eventually, start_bot
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.satori_server import FakeSatori

BOT = "10004"
TOKEN = "satori-token"


class Satori:
    def __init__(self, app: Any, server: FakeSatori) -> None:
        self.app = app
        self.server = server
        self.ids = 100

    def next_id(self) -> str:
        self.ids += 1
        return str(self.ids)

    def creates(self) -> list[dict[str, Any]]:
        return [c for c in self.server.calls if c["api"] == "message.create"]

    async def say(self, event: dict[str, Any]) -> dict[str, Any]:
        seen = len(self.creates())
        await self.server.push(event)
        await eventually(lambda: len(self.creates()) > seen, timeout=10)
        return self.creates()[seen]


@pytest.fixture
async def satori(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Satori] = []

    async def start(extra: dict[str, Any] | None = None, token: str = TOKEN, legacy: bool = False) -> Satori:
        server = FakeSatori(BOT, token=TOKEN, legacy_events=legacy)
        url = await server.start()
        app = await start_bot(write_config({"mirai": None, "satori": {"url": url, "token": token}, **(extra or {})}))
        started.append(Satori(app, server))
        if token == TOKEN:
            await eventually(lambda: app.adapters["satori"].connected, timeout=10)
        return started[-1]

    yield start
    for s in started:
        await s.app.stop()
        await s.server.stop()


@pytest.mark.parametrize("legacy", [False, True])
async def test_private_group_quote_and_own_messages(satori: Any, legacy: bool, fake_llm: FakeOpenAI) -> None:
    s = await satori(legacy=legacy)
    server = s.server
    private = await s.say(server.message_event("private:20001", "20001", "你好 &amp; 再见", s.next_id()))
    assert private["body"]["channel_id"] == "private:20001" and private["body"]["content"] == "echo: 你好 &amp; 再见"
    headers_ok = s.app.adapters["satori"]
    assert (headers_ok.platform, headers_ok.self_id) == ("llonebot", BOT)  # learned from READY
    message_id = s.next_id()
    group = await s.say(
        server.message_event("30001", "20002", f'<at id="{BOT}"/> 群里好', message_id, guild_id="30001")
    )
    assert group["body"]["channel_id"] == "30001"
    assert group["body"]["content"] == f'<quote id="{message_id}"/>echo: 群里好'
    quoted = f'<quote id="5"><author id="{BOT}"/>之前的回答</quote>继续'
    followed = await s.say(server.message_event("30001", "20002", quoted, s.next_id(), guild_id="30001"))
    assert followed["body"]["content"].endswith("echo: [引用: 之前的回答]\n继续")
    await server.push(server.message_event("private:20001", BOT, "我自己", s.next_id()))
    after = await s.say(server.message_event("private:20001", "20001", "还在", s.next_id()))
    assert after["body"]["content"] == "echo: 还在"
    assert len(fake_llm.requests) == 4


async def test_reconnect_resumes_with_sn_and_misses_nothing(satori: Any, fake_llm: FakeOpenAI) -> None:
    s = await satori()
    server = s.server
    await s.say(server.message_event("private:20001", "20001", "第一条", s.next_id()))
    last_sn = s.app.adapters["satori"].sn
    await server.drop()
    await server.push(server.message_event("private:20001", "20001", "断线期间", s.next_id()))
    await eventually(lambda: len(s.creates()) >= 2, timeout=15)
    assert s.creates()[1]["body"]["content"] == "echo: 断线期间"
    assert server.identifies[-1].get("sn") == last_sn


async def test_wrong_token_is_closed_with_4004_and_logged(satori: Any, log_lines: list[str]) -> None:
    # A refused token is fatal now (it used to be retried forever): the link stops, and with it the bot.
    s = await satori(token="wrong")
    await asyncio.wait_for(s.app.all_stopped.wait(), timeout=10)
    assert any("4004" in line and "[satori] token" in line for line in log_lines)
    assert [link.state for link in s.app.adapters["satori"].links] == [LinkState.STOPPED]
    assert not s.app.adapters["satori"].connected


async def test_pings_every_ten_seconds(satori: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(satori_adapter, "PING_SECONDS", 0.1)
    s = await satori()
    await s.server.drop()  # reconnect picks up the short interval
    await eventually(lambda: s.server.pings >= 3, timeout=10)


async def test_requests_and_malformed_frames(satori: Any, fake_llm: FakeOpenAI) -> None:
    s = await satori({"system": {"accept_friend_request": True}})
    server = s.server
    await server.push(server.friend_request("20005", "req-1"))
    await server.push(server.guild_request("30005", "20005", "req-2"))
    for garbage in ({"type": "message-created"}, {"type": 5}, {"type": "message-created", "user": "x", "message": 1}):
        await server.push(garbage)
    await eventually(lambda: len([c for c in server.calls if c["api"].endswith(".approve")]) >= 2, timeout=10)
    approvals = {c["api"]: c["body"] for c in server.calls if c["api"].endswith(".approve")}
    assert approvals["friend.approve"]["approve"] is True and approvals["guild.approve"]["approve"] is False
    answer = await s.say(server.message_event("private:20001", "20001", "正常", s.next_id()))
    assert answer["body"]["content"] == "echo: 正常"
    await asyncio.sleep(0.1)


# --- recorded events ------------------------------------------------------------------------------

RECORDED = json.loads((Path(__file__).parent / "samples" / "satori" / "events.json").read_text("utf-8"))["events"]


@pytest.mark.parametrize("case", RECORDED, ids=[case["name"] for case in RECORDED])
async def test_recorded_events_decode_as_expected(case: dict[str, Any]) -> None:
    events: list[Event] = []

    async def sink(event: Event) -> None:
        events.append(event)

    adapter = SatoriAdapter("satori", SatoriSettings(), sink)
    adapter.self_id = BOT
    await adapter.on_event(case["event"])
    assert adapter.sn == case["event"]["sn"]
    expect = case["expect"]
    if expect["kind"] == "none":
        assert events == []
        return
    [event] = events
    if expect["kind"] == "message":
        assert isinstance(event, MessageEvent) and event.platform == "qq"
        chat = ChatType.PRIVATE if expect["chat"] == "private" else ChatType.GROUP
        assert (event.chat_type, event.user_id, event.group_id) == (chat, expect["user_id"], expect["group_id"])
        assert (event.message_id, event.to_me) == (expect["message_id"], expect["to_me"])
        assert "".join(seg.text for seg in event.message if isinstance(seg, Text)) == expect["text"]
        assert event.sender_name == expect["sender_name"]
    else:
        assert isinstance(event, RequestEvent)
        assert (event.kind, event.user_id, event.group_id, event.comment) == (
            expect["request"],
            expect["user_id"],
            expect["group_id"],
            expect["comment"],
        )
