"""Commands are answered at once while the session's answer runs; `停止` and reset cancel that answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI, echo_last_user

USER = 20001
SESSION = f"qq:private:{USER}"  # platform "qq": the history is the same through any QQ protocol
SLOW_ANSWER = 30.0  # the model takes this long: no test may wait for it


class Peer:
    """A started bot and the fake Mirai talking to it, with a clock for "answered at once"."""

    def __init__(self, app: Any, mirai: FakeMirai) -> None:
        self.app = app
        self.mirai = mirai
        self.ids = 1000

    async def say(self, text: str) -> None:
        self.ids += 1
        await self.mirai.push(friend_message(USER, text, self.ids))

    async def ask(self, text: str, within: float = 5.0) -> tuple[str, float]:
        """Send `text`; the bot's next message and how many seconds it took."""
        seen = len(self.mirai.commands)
        started = asyncio.get_running_loop().time()
        await self.say(text)
        commands = await self.mirai.wait_commands(seen + 1, timeout=within)
        return sent_text(commands[seen]), asyncio.get_running_loop().time() - started

    async def history(self) -> list[tuple[str, str]]:
        return [(turn.role, turn.content) for turn in await self.app.store.window(SESSION, 100_000)]


@pytest.fixture
async def peer(write_config: Callable[..., Path]) -> AsyncIterator[Peer]:
    app = await start_bot(
        write_config({"response": {"timeout": 20, "max_timeout": 60}, "trigger": {"allowed_models": ["m1", "m2"]}})
    )
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    yield Peer(app, mirai)
    await mirai.close()
    await app.stop()


def open_model_connections(fake_llm: FakeOpenAI) -> int:
    """Connections the fake OpenAI server has open (a cancelled call closes its own)."""
    runner: web.AppRunner | None = fake_llm._runner
    assert runner is not None and runner.server is not None
    return len(runner.server.connections)


async def start_slow_answer(peer: Peer, fake_llm: FakeOpenAI, text: str = "慢问题") -> None:
    before = len(fake_llm.requests)
    fake_llm.latency = SLOW_ANSWER
    await peer.say(text)
    await eventually(lambda: len(fake_llm.requests) == before + 1 and open_model_connections(fake_llm) == 1)


async def test_ping_and_help_are_answered_during_a_slow_answer(peer: Peer, fake_llm: FakeOpenAI) -> None:
    await start_slow_answer(peer, fake_llm)
    pong, took = await peer.ask("ping", within=2)
    assert pong.startswith("当前账号") and took < 1.0
    help_text, took = await peer.ask("帮助", within=2)
    assert "停止：停止正在进行的回答" in help_text and took < 1.0
    rollback, took = await peer.ask("回滚会话", within=2)
    assert rollback.startswith("回滚失败") and took < 1.0
    assert len(fake_llm.requests) == 1  # the slow answer is still the only model call


async def test_stop_cancels_the_model_call_and_stores_nothing(peer: Peer, fake_llm: FakeOpenAI) -> None:
    await start_slow_answer(peer, fake_llm)
    stopped, took = await peer.ask("停止", within=2)
    assert stopped == "好的，已停止回答。" and took < 1.0
    # the model call itself is cancelled: the fake server sees its connection closed
    await eventually(lambda: open_model_connections(fake_llm) == 0, timeout=2)
    assert await peer.history() == []
    assert peer.app.manager.status().count("0 个会话") == 1
    fake_llm.latency = 0
    answer, _ = await peer.ask("下一个")
    assert answer == "echo: 下一个"
    assert await peer.history() == [("user", "下一个"), ("assistant", "echo: 下一个")]
    assert [sent_text(c) for c in peer.mirai.commands] == ["好的，已停止回答。", "echo: 下一个"]


async def test_stop_with_nothing_running_says_so(peer: Peer, fake_llm: FakeOpenAI) -> None:
    assert (await peer.ask("/stop"))[0] == "现在没有正在进行的回答。"
    assert fake_llm.requests == []


async def test_stop_also_drops_the_messages_queued_behind_the_answer(peer: Peer, fake_llm: FakeOpenAI) -> None:
    await start_slow_answer(peer, fake_llm, "第一条")
    await peer.say("第二条")
    await peer.say("第三条")
    await eventually(lambda: "排队：2 条" in peer.app.manager.status())
    assert (await peer.ask("停止", within=2))[0] == "好的，已停止回答。"
    fake_llm.latency = 0
    # FIFO: had the queued messages survived, their answers would come before this one
    assert (await peer.ask("第四条"))[0] == "echo: 第四条"
    assert [r["body"]["messages"][-1]["content"] for r in fake_llm.requests] == ["第一条", "第四条"]


async def test_reset_during_an_answer_cancels_it(peer: Peer, fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0
    assert (await peer.ask("记住这个"))[0] == "echo: 记住这个"
    await start_slow_answer(peer, fake_llm, "慢问题")
    reset, took = await peer.ask("重置会话", within=2)
    assert reset == "会话已重置。" and took < 1.0
    await eventually(lambda: open_model_connections(fake_llm) == 0, timeout=2)
    assert await peer.history() == []
    fake_llm.latency = 0
    assert (await peer.ask("新的开始"))[0] == "echo: 新的开始"
    sent = [m["content"] for m in fake_llm.requests[-1]["body"]["messages"] if m["role"] != "system"]
    assert sent == ["新的开始"]


async def test_a_message_sent_right_after_reset_is_kept_and_answered_afresh(peer: Peer, fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0
    assert (await peer.ask("旧话题"))[0] == "echo: 旧话题"
    await start_slow_answer(peer, fake_llm, "慢问题")
    seen = len(peer.mirai.commands)
    await peer.say("重置会话")
    await peer.say("新问题")  # arrives while the reset is still stopping the slow answer
    fake_llm.latency = 0
    commands = await peer.mirai.wait_commands(seen + 2)
    assert [sent_text(c) for c in commands[seen:]] == ["会话已重置。", "echo: 新问题"]
    assert await peer.history() == [("user", "新问题"), ("assistant", "echo: 新问题")]


async def test_a_message_right_after_a_model_switch_uses_the_new_model(peer: Peer, fake_llm: FakeOpenAI) -> None:
    seen = len(peer.mirai.commands)
    await peer.say("切换模型 m2")
    await peer.say("你好")  # commands run at once, yet the chat after them sees their effect
    commands = await peer.mirai.wait_commands(seen + 2)
    assert [sent_text(c) for c in commands[seen:]] == ["已切换到模型 m2。", "echo: 你好"]
    assert fake_llm.requests[-1]["body"]["model"] == "m2"


@pytest.fixture
async def streaming_peer(write_config: Callable[..., Path]) -> AsyncIterator[Peer]:
    extra = {"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 0}}
    app = await start_bot(write_config(extra))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    yield Peer(app, mirai)
    await mirai.close()
    await app.stop()


async def test_stop_mid_stream_sends_no_further_part(streaming_peer: Peer, fake_llm: FakeOpenAI) -> None:
    peer = streaming_peer
    paragraphs = "\n\n".join(f"第{n}段。" for n in range(200))
    fake_llm.reply_fn = lambda body: paragraphs if echo_last_user(body) == "echo: 长回答" else echo_last_user(body)
    fake_llm.chunk_chars = 4
    fake_llm.chunk_delay = 0.05  # 200 paragraphs take over 10 s to stream
    await peer.say("长回答")
    first = await peer.mirai.wait_commands(1)
    assert sent_text(first[0]).startswith("第0段。")
    stopped, took = await peer.ask("停止", within=2)
    assert stopped == "好的，已停止回答。" and took < 1.0
    await eventually(lambda: open_model_connections(fake_llm) == 0, timeout=2)
    fake_llm.chunk_delay = 0
    seen = len(peer.mirai.commands)
    assert (await peer.ask("下一个"))[0] == "echo: 下一个"
    # the stop reply is sent only after the answer has unwound: nothing of it may follow
    texts = [sent_text(c) for c in peer.mirai.commands]
    assert texts[texts.index(stopped) + 1 :] == ["echo: 下一个"] and len(texts) == seen + 1
    assert await peer.history() == [("user", "下一个"), ("assistant", "echo: 下一个")]
