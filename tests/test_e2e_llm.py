"""Model features end to end: fake mirai-api-http ⇄ bot ⇄ fake OpenAI server (and a fake image server)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot import App
from storage.store import SqlHistoryStore
from tests.conftest import BOT_QQ, VERIFY_KEY, mirai_url, start_bot
from tests.fakes.image_server import FakeImageServer
from tests.fakes.mirai_peer import FakeMirai, friend_message, group_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

ADMIN = 20099


def conversation_of(request: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] != "system"]


class Bot:
    """The app and a verified fake Mirai; `say` sends a private message and returns the bot's texts."""

    def __init__(self, app: App, mirai: FakeMirai) -> None:
        self.app = app
        self.mirai = mirai
        self.next_id = 1

    async def say(self, text: str, user: int = 20001, replies: int = 1) -> list[str]:
        seen = len(self.mirai.commands)
        self.next_id += 1
        await self.mirai.push(friend_message(user, text, self.next_id))
        commands = await self.mirai.wait_commands(seen + replies)
        return [sent_text(c) for c in commands[seen:]]


@pytest.fixture
async def launch(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    """Start bots from config overrides; every one is stopped at the end."""
    running: list[Bot] = []

    async def start(extra: dict[str, Any] | None = None, config: Path | None = None) -> Bot:
        extra = extra or {}
        extra.setdefault("mirai", {})["manager_qq"] = ADMIN
        app = await start_bot(config or write_config(extra))
        mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
        await mirai.connect()
        running.append(Bot(app, mirai))
        return running[-1]

    yield start
    for bot in running:
        await bot.mirai.close()
        await bot.app.stop()


def accounts(fake_llm: FakeOpenAI, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"openai": {"accounts": [{"api_endpoint": fake_llm.base_url, **e} for e in entries]}}


async def test_long_streamed_answer_arrives_in_paragraph_parts(launch: Any, fake_llm: FakeOpenAI) -> None:
    paragraphs = ["第一段：" + "甲" * 40, "```python\nprint(1)\n\nprint(2)\n```", "第三段：" + "丙" * 40]
    fake_llm.reply_fn = lambda body: "\n\n".join(paragraphs)
    fake_llm.chunk_chars = 5
    fake_llm.chunk_delay = 0.03  # the whole answer takes about a second to stream
    bot = await launch({"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 0.2}})
    parts = await bot.say("写三段", replies=2)
    await asyncio.sleep(0.5)
    parts = [sent_text(c) for c in bot.mirai.commands]
    assert len(parts) >= 2
    assert "\n\n".join(parts) == "\n\n".join(paragraphs)
    assert all(p.count("```") % 2 == 0 for p in parts)  # a code block is never cut in two
    # the stored answer is the whole text, once
    await bot.say("下一句", replies=1)
    assert conversation_of(fake_llm.requests[-1])[1] == ("assistant", "\n\n".join(paragraphs))


async def test_quick_answer_is_one_message_even_when_streamed(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.reply_fn = lambda body: "一段。\n\n两段。\n\n三段。"
    bot = await launch({"openai": {"gpt_params": {"stream": True}}})
    assert await bot.say("快速回答") == ["一段。\n\n两段。\n\n三段。"]


async def test_stream_breaking_midway_stores_only_what_reached_the_user(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch({"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 0}})
    await bot.say("第一句")
    fake_llm.reply_fn = lambda body: "前半段内容。\n\n后半段内容不会到达。"
    fake_llm.chunk_chars = 4
    fake_llm.break_stream_after = 3
    texts = await bot.say("会断掉", replies=2)
    assert texts[0] == "前半段内容。" and texts[1].startswith("（回答中断了")
    fake_llm.break_stream_after = None
    fake_llm.reply_fn = lambda body: "好的"
    await bot.say("第三句")
    assert conversation_of(fake_llm.requests[-1]) == [
        ("user", "第一句"),
        ("assistant", "echo: 第一句"),
        ("user", "会断掉"),
        ("assistant", "前半段内容。\n\n（回答中断）"),  # the part the user saw, marked (tests/test_partial_answers.py)
        ("user", "第三句"),
    ]


async def test_reasoning_is_neither_sent_nor_stored(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.reply_fn = lambda body: "<think>\n用户在打招呼，我应该……\n</think>\n\n你好！"
    bot = await launch({"openai": {"gpt_params": {"stream": True}}})
    assert await bot.say("你好") == ["你好！"]
    fake_llm.reply_fn = lambda body: "ok"
    fake_llm.reasoning = "reasoning_content 也不该出现"
    assert await bot.say("再来") == ["ok"]
    await bot.say("第三句")
    stored = [content for role, content in conversation_of(fake_llm.requests[-1]) if role == "assistant"]
    assert stored == ["你好！", "ok"]


async def test_reasoning_shown_when_configured(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.reply_fn = lambda body: "<think>想</think>答"
    bot = await launch({"openai": {"gpt_params": {"stream": False}}, "response": {"show_reasoning": True}})
    [text] = await bot.say("问")
    assert "想" in text and "答" in text


async def test_window_with_10000_stored_messages(
    launch: Any, write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    config = write_config({"openai": {"gpt_params": {"max_tokens": 1000, "min_tokens": 400}}})
    url = config.read_text(encoding="utf-8").split('url = "')[1].split('"')[0]
    store = await SqlHistoryStore.open(url)
    for n in range(5000):
        await store.append_exchange("qq:private:20001", f"问题{n}", f"回答{n}")
    await store.close()
    bot = await launch(config=config)
    await bot.say("最新的问题")
    turns = conversation_of(fake_llm.requests[-1])
    assert turns[-1] == ("user", "最新的问题")
    assert turns[-3:-1] == [("user", "问题4999"), ("assistant", "回答4999")]
    assert 20 < len(turns) < 200  # about 600 tokens of history, not 10,000 messages


async def test_context_limit_retries_once_with_a_smaller_window(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch()
    for n in range(6):
        await bot.say(f"第{n}句话" + "很长" * 20)
    fake_llm.context_limit = 300  # the whole history no longer fits; half of it does
    [reply] = await bot.say("还记得吗")
    assert reply == "echo: 还记得吗"
    refused, accepted = fake_llm.requests[-2:]
    assert len(conversation_of(accepted)) < len(conversation_of(refused))
    fake_llm.context_limit = 1
    [reply] = await bot.say("装不下了")
    assert "对话太长" in reply


async def test_switching_model_and_ai_persists_across_restart(
    launch: Any, write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    extra = accounts(
        fake_llm,
        {"name": "main", "api_key": "sk-a", "model": "m1", "models": ["m1-pro"]},
        {"name": "deep", "api_key": "sk-b", "model": "deepseek-chat"},
    )
    extra["trigger"] = {"allowed_models": ["m1", "m1-pro"], "allow_switching_ai": False}
    config = write_config(extra | {"mirai": {"manager_qq": ADMIN}})
    bot = await launch(config=config)
    assert await bot.say("切换模型 gpt-5") == ["不能切换到模型 gpt-5。可以使用的模型：m1、m1-pro"]
    assert await bot.say("切换模型 m1-pro") == ["已切换到模型 m1-pro。"]
    assert await bot.say("切换AI deep") == ["只有管理员可以切换 AI。"]
    assert await bot.say("切换AI nobody", user=ADMIN) == ["没有名为 nobody 的 AI。可以使用的：main、deep"]
    assert await bot.say("切换AI deep", user=ADMIN) == ["已切换到 deep（模型 deepseek-chat）。"]
    await bot.say("你好")
    await bot.say("你好", user=ADMIN)
    assert [r["body"]["model"] for r in fake_llm.requests] == ["m1-pro", "deepseek-chat"]
    assert fake_llm.authorizations() == ["sk-a", "sk-b"]
    await bot.mirai.close()
    await bot.app.stop()

    again = await launch(config=config)
    [ping] = await again.say("ping")
    assert ping == "当前账号：main\n当前模型：m1-pro\n当前预设：default\n当前语音：无"
    await again.say("重启后")
    await again.say("重启后", user=ADMIN)
    assert [r["body"]["model"] for r in fake_llm.requests[-2:]] == ["m1-pro", "deepseek-chat"]


async def test_images_reach_a_vision_account_as_parts(launch: Any, fake_llm: FakeOpenAI) -> None:
    images = FakeImageServer()
    base = await images.start()
    try:
        bot = await launch(accounts(fake_llm, {"name": "eyes", "api_key": "sk-a", "model": "gpt-4o", "vision": True}))
        event = group_message(30001, 20001, "这是什么？", 7, at=BOT_QQ)
        event["messageChain"].append({"type": "Image", "imageId": "{X}.png", "url": f"{base}/cat.png?rkey=secret"})
        await bot.mirai.push(event)
        await bot.mirai.wait_commands(1)
        content = fake_llm.requests[-1]["body"]["messages"][-1]["content"]
        assert content[0] == {"type": "text", "text": "这是什么？[图片]"}
        data_url = content[1]["image_url"]["url"]
        assert data_url.startswith("data:image/png;base64,")
        assert base64.b64decode(data_url.split(",", 1)[1]).startswith(b"\x89PNG")
        # a reply to a message with a picture: the quoted picture goes to the model too
        quote: dict[str, Any] = {"id": 7, "groupId": 30001, "senderId": 20002, "targetId": 30001}
        quote["origin"] = [{"type": "Image", "imageId": "{Y}.jpg", "url": f"{base}/cat.jpg"}]
        await bot.mirai.push(group_message(30001, 20001, "那这张呢", 8, at=BOT_QQ, quote=quote))
        await bot.mirai.wait_commands(2)
        content = fake_llm.requests[-1]["body"]["messages"][-1]["content"]
        assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        # history keeps a placeholder, never the bytes
        await bot.say("第三句")
        history = str(fake_llm.requests[-1]["body"]["messages"])
        assert "base64" not in history
    finally:
        await images.stop()


async def test_images_are_not_fetched_without_a_vision_account(launch: Any, fake_llm: FakeOpenAI) -> None:
    images = FakeImageServer()
    base = await images.start()
    try:
        bot = await launch()
        event = friend_message(20001, "看图", 3)
        event["messageChain"].append({"type": "Image", "url": f"{base}/cat.png"})
        await bot.mirai.push(event)
        await bot.mirai.wait_commands(1)
        assert fake_llm.requests[-1]["body"]["messages"][-1]["content"] == "看图[图片]"
        assert sum(images.hits.values()) == 0
    finally:
        await images.stop()


async def test_drawing_sends_a_picture(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch(accounts(fake_llm, {"name": "p", "api_key": "sk-a", "image_model": "dall-e-3"}))
    await bot.mirai.push(group_message(30001, 20001, "画 一只戴帽子的猫", 5, at=BOT_QQ))
    [command] = await bot.mirai.wait_commands(1)
    [element] = command["content"]["messageChain"]
    assert element["type"] == "Image" and base64.b64decode(element["base64"]).startswith(b"\x89PNG")
    assert command["content"]["quote"] == 5
    assert fake_llm.image_requests[0]["body"]["prompt"] == "一只戴帽子的猫"
    assert fake_llm.requests == []  # drawing never reaches the chat model


async def test_drawing_without_an_image_account_says_so(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch()
    assert await bot.say("画一只猫") == ["没有可以画图的账号，请管理员在账号里设置 image_model。"]


async def test_rejected_key_stays_disabled_until_the_config_is_reloaded(
    launch: Any, write_config: Callable[..., Path], fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    fake_llm.fail_key("sk-expired")
    config = write_config(
        accounts(fake_llm, {"name": "main", "api_key": "sk-expired", "model": "m1"}) | {"mirai": {"manager_qq": ADMIN}}
    )
    bot = await launch(config=config)
    [reply] = await bot.say("你好")
    assert "模型账号验证失败" in reply
    assert any("account main rejected its API key" in line for line in log_lines)
    assert not any("sk-expired" in line for line in log_lines)
    [reply] = await bot.say("还在吗")  # no second request with the bad key
    assert "模型账号验证失败" in reply and len(fake_llm.requests) == 1
    config.write_text(config.read_text(encoding="utf-8").replace("sk-expired", "sk-renewed"), encoding="utf-8")
    assert await bot.say("重载配置") == ["只有管理员可以使用这个命令。"]
    assert await bot.say("重载配置", user=ADMIN) == ["已重新加载模型账号设置（1 个账号）。其他设置重启后生效。"]
    assert await bot.say("现在呢") == ["echo: 现在呢"]
    assert fake_llm.authorizations()[-1] == "sk-renewed"
