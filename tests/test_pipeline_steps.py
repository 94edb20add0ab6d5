"""The message pipeline: its steps run in DESIGN.md's order, and a rate-limited message is never queued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conversation import pipeline
from conversation.manager import ConversationManager
from conversation.pipeline import Context, Next, Step
from core.event import ChatType, MessageEvent
from core.message import Text, describe
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

USER = 20001
ORDER = ["_dedupe", "_listen", "_trigger", "_access", "_command", "_rate_limit", "_enqueue"]


class Peer:
    """A started bot and the fake Mirai talking to it."""

    def __init__(self, app: Any, mirai: FakeMirai) -> None:
        self.app = app
        self.mirai = mirai
        self.ids = 500

    @property
    def manager(self) -> ConversationManager:
        manager: ConversationManager = self.app.manager
        return manager

    async def say(self, text: str, user: int = USER, message_id: int | None = None) -> None:
        self.ids += 1
        await self.mirai.push(friend_message(user, text, self.ids if message_id is None else message_id))

    async def replies(self, count: int, seen: int, within: float = 5.0) -> list[str]:
        commands = await self.mirai.wait_commands(seen + count, timeout=within)
        return [sent_text(c) for c in commands[seen:]]


@pytest.fixture
async def peer(write_config: Callable[..., Path]) -> AsyncIterator[Peer]:
    app = await start_bot(write_config({"response": {"timeout": 20, "max_timeout": 60}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    yield Peer(app, mirai)
    await mirai.close()
    await app.stop()


def record_steps(manager: ConversationManager) -> list[tuple[str, str]]:
    """Wrap each step so it notes (step name, message text) when a message reaches it."""
    seen: list[tuple[str, str]] = []

    def wrap(step: Step) -> Step:
        name = getattr(step, "__name__", repr(step))

        async def recorded(event: MessageEvent, ctx: Context, next: Next) -> None:
            seen.append((name, describe(event.message)))
            await step(event, ctx, next)

        return recorded

    manager.steps = [wrap(step) for step in manager.steps]
    return seen


async def test_a_chat_message_passes_every_step_in_order(peer: Peer) -> None:
    assert [getattr(step, "__name__", "") for step in peer.manager.steps] == ORDER
    seen = record_steps(peer.manager)
    before = len(peer.mirai.commands)
    await peer.say("你好")
    assert await peer.replies(1, before) == ["echo: 你好"]
    assert [name for name, text in seen if text == "你好"] == ORDER


async def test_each_step_can_end_the_way(peer: Peer) -> None:
    seen = record_steps(peer.manager)
    before = len(peer.mirai.commands)
    await peer.say("ping")  # a command: answered by the command step, never rate limited or queued
    await peer.replies(1, before)
    assert [name for name, text in seen if text == "ping"] == ORDER[:5]
    before = len(peer.mirai.commands)
    await peer.say("第一", message_id=9001)
    await peer.replies(1, before)
    await peer.say("第一", message_id=9001)  # redelivered: dropped by the first step
    await eventually(lambda: [name for name, text in seen if text == "第一"] == [*ORDER, "_dedupe"])


async def test_a_rate_limited_message_is_answered_at_once_and_never_queued(peer: Peer, fake_llm: FakeOpenAI) -> None:
    await peer.app.admin.set_limit("user", str(USER), 1)
    fake_llm.latency = 3.0  # the first answer is still running when the second message arrives
    before = len(peer.mirai.commands)
    await peer.say("第一个问题")
    await eventually(lambda: len(fake_llm.requests) == 1)
    started = asyncio.get_running_loop().time()
    await peer.say("第二个问题")
    [exceed] = await peer.replies(1, before, within=2.0)
    assert exceed == peer.app.settings.ratelimit.exceed
    assert asyncio.get_running_loop().time() - started < fake_llm.latency  # not behind the running answer
    session = peer.manager._sessions[f"qq:private:{USER}"]
    assert len(session.waiting) == 0 and session.answering  # only the first message, being answered
    answers = await peer.replies(2, before, within=10.0)
    assert answers[1].startswith("echo: 第一个问题")
    assert len(fake_llm.requests) == 1


async def test_the_chain_stops_where_a_step_does_not_call_next() -> None:
    calls: list[str] = []

    def step(name: str, go_on: bool) -> Step:
        async def run(event: MessageEvent, ctx: Context, next: Next) -> None:
            calls.append(name)
            ctx.prompt += name
            if go_on:
                await next(event, ctx)

        return run

    event = MessageEvent(
        adapter="test", platform="qq", self_id="1", chat_type=ChatType.PRIVATE, user_id="2", message=(Text("hi"),)
    )
    ctx = Context(None)
    await pipeline.run([step("a", True), step("b", False), step("c", True)], event, ctx)
    assert calls == ["a", "b"] and ctx.prompt == "ab"
