"""Milky end to end with events by WS, SSE and webhook: fake Milky ⇄ bot ⇄ fake OpenAI server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.link import LinkState
from adapters.milky.adapter import MilkyAdapter
from adapters.milky.settings import MilkySettings
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent, Role
from core.message import Text
from tests.conftest import eventually, free_port, start_bot
from tests.fakes.milky_server import FakeMilky, sent_text
from tests.fakes.openai_server import FakeOpenAI

BOT = 10003
TOKEN = "milky-token"


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "data": {"text": value}}


def mention(user: int) -> dict[str, Any]:
    return {"type": "mention", "data": {"user_id": user, "name": "bot"}}


class Milky:
    def __init__(self, app: Any, impl: FakeMilky) -> None:
        self.app = app
        self.impl = impl
        self.seq = 100

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def sends(self) -> list[dict[str, Any]]:
        return [c for c in self.impl.calls if c["api"].startswith(("send_", "accept_", "reject_"))]

    async def say(self, event: dict[str, Any], replies: int = 1) -> list[dict[str, Any]]:
        seen = len(self.sends())
        await self.impl.push(event)
        await eventually(lambda: len(self.sends()) >= seen + replies, timeout=10)
        return self.sends()[seen:]


@pytest.fixture
async def milky(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Milky] = []

    async def start(transport: str, extra: dict[str, Any] | None = None, token: str = TOKEN) -> Milky:
        impl = FakeMilky(BOT, access_token=TOKEN)
        url = await impl.start()
        section: dict[str, Any] = {"url": url, "access_token": token, "event_transport": transport}
        if transport == "webhook":
            port = free_port()
            section |= {"webhook_host": "127.0.0.1", "webhook_port": port}
            impl.webhook_url = f"http://127.0.0.1:{port}/"
        app = await start_bot(write_config({"mirai": None, "milky": section, **(extra or {})}))
        started.append(Milky(app, impl))
        if token == TOKEN:
            await eventually(lambda: app.adapters["milky"].connected, timeout=10)
        return started[-1]

    yield start
    for m in started:
        await m.app.stop()
        await m.impl.stop()


@pytest.mark.parametrize("transport", ["ws", "sse", "webhook"])
async def test_private_group_quote_and_own_messages(milky: Any, transport: str, fake_llm: FakeOpenAI) -> None:
    m = await milky(transport)
    impl = m.impl
    [private] = await m.say(impl.message_event("friend", 20001, 20001, [text("你好")], m.next_seq()))
    assert private["api"] == "send_private_message" and sent_text(private) == "echo: 你好"
    seq = m.next_seq()
    [group] = await m.say(impl.message_event("group", 30001, 20002, [mention(BOT), text(" 群里好")], seq))
    assert group["api"] == "send_group_message" and group["params"]["group_id"] == 30001
    assert group["params"]["message"][0] == {"type": "reply", "data": {"message_seq": seq}}
    assert sent_text(group) == "echo: 群里好"
    # the older `message` key, a reply to the bot (counts as a mention; quoted text is context)
    reply = {"type": "reply", "data": {"message_seq": 5, "sender_id": BOT, "time": 1, "segments": [text("之前的回答")]}}
    [quoted] = await m.say(impl.message_event("group", 30001, 20002, [reply, text("继续")], m.next_seq(), True))
    assert sent_text(quoted) == "echo: [引用: 之前的回答]\n继续"
    await impl.push(impl.message_event("friend", 20001, BOT, [text("我自己")], m.next_seq()))
    garbage_events: list[dict[str, Any]] = [
        {"event_type": "message_receive", "data": 5},
        {"event_type": 7},
        {"data": {}},
    ]
    for garbage in garbage_events:
        await impl.push(garbage)
    [after] = await m.say(impl.message_event("friend", 20001, 20001, [text("还在")], m.next_seq()))
    assert sent_text(after) == "echo: 还在"
    assert [r["body"]["messages"][-1]["content"] for r in fake_llm.requests][-1] == "还在"
    assert len(fake_llm.requests) == 4


async def test_requests_per_config_and_poke(milky: Any) -> None:
    m = await milky("ws", {"system": {"accept_friend_request": True}, "response": {"poke_reply": "别戳"}})
    impl = m.impl
    await impl.push(impl.friend_request(20005, "加个好友"))
    await impl.push(impl.group_invitation(30005, 77, 20005))
    await eventually(lambda: len(m.sends()) >= 2, timeout=10)
    answers = {c["api"]: c["params"] for c in m.sends()}
    assert answers["accept_friend_request"]["initiator_uid"] == "u_fake20005"
    assert answers["reject_group_invitation"] == {"group_id": 30005, "invitation_seq": 77}
    [poke] = await m.say(impl.group_nudge(30001, 20001, BOT))
    assert sent_text(poke) == "别戳"


async def test_long_answer_as_forward(milky: Any, fake_llm: FakeOpenAI) -> None:
    m = await milky("ws")
    fake_llm.reply_fn = lambda body: "\n\n".join("很长的段落。" * 50 for _ in range(8))
    [sent] = await m.say(m.impl.message_event("friend", 20001, 20001, [text("写长文")], m.next_seq()))
    [forward] = sent["params"]["message"]
    assert forward["type"] == "forward" and forward["data"]["messages"][0]["user_id"] == BOT


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_event_stream_dropping_loses_no_reply(milky: Any, transport: str, fake_llm: FakeOpenAI) -> None:
    m = await milky(transport)
    fake_llm.latency = 0.5
    await m.impl.push(m.impl.message_event("friend", 20001, 20001, [text("慢")], m.next_seq()))
    await asyncio.sleep(0.1)
    await m.impl.drop()  # the event stream drops while the model is thinking
    await eventually(lambda: len(m.sends()) >= 1, timeout=10)
    assert sent_text(m.sends()[0]) == "echo: 慢"
    await eventually(lambda: len(m.impl.channels) >= 1, timeout=10)  # the bot reconnected by itself
    [later] = await m.say(m.impl.message_event("friend", 20001, 20001, [text("重连后")], m.next_seq()))
    assert sent_text(later) == "echo: 重连后"


async def test_wrong_token_refused(milky: Any, log_lines: list[str]) -> None:
    # A refused token is fatal now (it used to be retried forever): the link stops, and with it the bot.
    m = await milky("ws", token="wrong")
    await asyncio.wait_for(m.app.all_stopped.wait(), timeout=10)
    assert any("Milky event stream" in line and "stopped" in line for line in log_lines)
    assert [link.state for link in m.app.adapters["milky"].links] == [LinkState.STOPPED]
    assert not m.app.adapters["milky"].connected


async def test_webhook_checks_the_token(milky: Any, fake_llm: FakeOpenAI) -> None:
    m = await milky("webhook")

    url = m.impl.webhook_url
    event = m.impl.message_event("friend", 20001, 20001, [text("伪造")], m.next_seq())
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=event, headers={"Authorization": "Bearer nope"}) as response:
            assert response.status == 401
        async with session.post(url, json=event) as response:
            assert response.status == 401
    # A real event after the forged ones: once it is answered, the forged ones had every chance to be.
    [real] = await m.say(m.impl.message_event("friend", 20001, 20001, [text("真的")], m.next_seq()))
    assert sent_text(real) == "echo: 真的"
    assert [r["body"]["messages"][-1]["content"] for r in fake_llm.requests] == ["真的"]


# --- recorded events ------------------------------------------------------------------------------

RECORDED = json.loads((Path(__file__).parent / "samples" / "milky" / "events.json").read_text("utf-8"))["events"]
CHATS = {"private": ChatType.PRIVATE, "group": ChatType.GROUP, "temp": ChatType.TEMP}


@pytest.mark.parametrize("case", RECORDED, ids=[case["name"] for case in RECORDED])
async def test_recorded_events_decode_as_expected(case: dict[str, Any]) -> None:
    events: list[Event] = []

    async def sink(event: Event) -> None:
        events.append(event)

    adapter = MilkyAdapter("milky", MilkySettings(), sink)
    adapter.self_id = str(BOT)
    await adapter.on_event(case["event"])
    expect = case["expect"]
    if expect["kind"] == "none":
        assert events == []
        return
    [event] = events
    if expect["kind"] == "message":
        assert isinstance(event, MessageEvent)
        assert (event.chat_type, event.user_id, event.group_id) == (
            CHATS[expect["chat"]],
            expect["user_id"],
            expect["group_id"],
        )
        assert (event.message_id, event.to_me) == (expect["message_id"], expect["to_me"])
        assert "".join(seg.text for seg in event.message if isinstance(seg, Text)) == expect["text"]
        assert event.sender_name == expect.get("sender_name", event.sender_name)
        assert event.sender_role is {"admin": Role.ADMIN, "owner": Role.OWNER}.get(expect.get("role", ""), Role.MEMBER)
    elif expect["kind"] == "request":
        assert isinstance(event, RequestEvent)
        assert (event.kind, event.user_id, event.group_id, event.comment) == (
            expect["request"],
            expect["user_id"],
            expect["group_id"],
            expect["comment"],
        )
    else:
        assert isinstance(event, NoticeEvent) and event.kind == "poke"
        assert (event.user_id, event.group_id) == (expect["user_id"], expect["group_id"])
