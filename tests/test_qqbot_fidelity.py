"""Official QQ payloads as the platform sends them: quoted messages, mention tokens and attachment URLs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.qqbot import adapter as qqbot_adapter
from adapters.qqbot import codec
from core.event import ChatType
from core.message import Image, Quote, Text
from tests.conftest import eventually, start_bot
from tests.fakes.image_server import FakeImageServer
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.qq_official import FakeQQ

APPID = "102000001"
SECRET = "qq-bot-secret-for-tests"
SAMPLES = json.loads((Path(__file__).parent / "samples" / "qqbot" / "quotes.json").read_text("utf-8"))["events"]


def _texts(message: Any) -> str:
    return "".join(seg.text for seg in message if isinstance(seg, Text))


def _images(message: Any) -> list[str]:
    return [seg.url for seg in message if isinstance(seg, Image)]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_recorded_reply_payloads_decode(name: str) -> None:
    case = SAMPLES[name]
    event = codec.decode_message(case["payload"], "qqbot", "BOT")
    assert event is not None
    expect = case["expect"]
    chat = ChatType.PRIVATE if expect["chat_type"] == "private" else ChatType.GROUP
    assert (event.chat_type, event.user_id, event.group_id) == (chat, expect["user_id"], expect["group_id"])
    assert (event.message_id, event.to_me) == (expect["message_id"], expect["to_me"])
    assert _texts(event.message) == expect["text"] and _images(event.message) == expect["images"]
    quotes = [seg for seg in event.message if isinstance(seg, Quote)]
    if expect["quote"] is None:
        assert quotes == []
    else:
        [quote] = quotes
        assert (quote.message_id, quote.sender_id) == (expect["quote"]["id"], expect["quote"]["sender_id"])
        assert _texts(quote.origin) == expect["quote"]["text"] and _images(quote.origin) == expect["quote"]["images"]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("<@!123> 你好", "你好"),
        ("<@123>你好", "你好"),
        ('  <qqbot-at-user id="X" /> 问 <@!Y> 一下', "问 @小明 一下"),
        ("<qqbot-at-everyone /> 通知", "通知"),
        ("1 <@ 2", "1 <@ 2"),  # not a token
        ("<@!1> 代码：\n    x  = 1", "代码：\n    x  = 1"),  # the user's own spacing is kept
    ],
)
def test_mention_tokens_never_reach_the_model(content: str, text: str) -> None:
    d = {"id": "m", "content": content, "author": {"user_openid": "U"}, "mentions": [{"id": "Y", "username": "小明"}]}
    event = codec.decode_message({"t": "C2C_MESSAGE_CREATE", "d": d}, "qqbot", "BOT")
    assert event is not None and _texts(event.message) == text


@pytest.mark.parametrize(
    ("url", "fixed"),
    [
        ("//multimedia.nt.qq.com.cn/a", "https://multimedia.nt.qq.com.cn/a"),
        ("gchat.qpic.cn/b", "https://gchat.qpic.cn/b"),
        ("https://x.cn/c", "https://x.cn/c"),
        ("http://x.cn/d", "http://x.cn/d"),
    ],
)
def test_attachment_urls_get_one_scheme(url: str, fixed: str) -> None:
    d = {
        "id": "m",
        "content": "",
        "author": {"user_openid": "U"},
        "attachments": [{"content_type": "image/png", "url": url}],
    }
    event = codec.decode_message({"t": "C2C_MESSAGE_CREATE", "d": d}, "qqbot", "BOT")
    assert event is not None and _images(event.message) == [fixed]


@pytest.fixture
async def platform() -> AsyncIterator[FakeQQ]:
    fake = FakeQQ(APPID, SECRET)
    fake.heartbeat_interval_ms = 300
    await fake.start()
    yield fake
    await fake.stop()


async def test_quoted_text_and_picture_reach_the_model(
    platform: FakeQQ, write_config: Callable[..., Path], fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qqbot_adapter, "SHARD_STAGGER", 0.2)
    images = FakeImageServer()
    base = await images.start()
    base_url = platform.base_url
    settings = {
        "appid": APPID,
        "secret": SECRET,
        "api_base": base_url,
        "token_url": f"{base_url}/app/getAppAccessToken",
    }
    account = {"name": "eyes", "api_key": "sk-a", "model": "gpt-4o", "vision": True, "api_endpoint": fake_llm.base_url}
    app = await start_bot(write_config({"mirai": None, "qqbot": settings, "openai": {"accounts": [account]}}))
    try:
        await platform.wait_ready(1, timeout=10)
        extra = {
            "message_type": 103,
            "message_scene": {"source": "default", "ext": ["ref_msg_idx=REFIDX_A=", "msg_idx=REFIDX_B="]},
            "mentions": [{"id": "M2", "member_openid": "M2", "username": "小红", "is_you": False}],
            "msg_elements": [
                {
                    "msg_idx": "REFIDX_A=",
                    "message_type": 103,
                    "content": "看这张",
                    "attachments": [{"content_type": "image/png", "url": f"{base}/cat.png"}],
                }
            ],
        }
        await platform.push_group_at("G1", "M1", "<@!M2> 这是什么？", extra=extra)
        await platform.wait_messages(1, timeout=10)
        content = fake_llm.requests[-1]["body"]["messages"][-1]["content"]
        assert content[0]["type"] == "text"
        assert content[0]["text"].startswith("[引用: 看这张") and content[0]["text"].endswith("@小红 这是什么？")
        assert "<@" not in content[0]["text"]
        assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
        await eventually(lambda: images.hits["/cat.png"] == 1)
    finally:
        await app.stop()
        await images.stop()
