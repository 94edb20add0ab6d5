"""Satori as real servers treat it: line structure on the wire, no quote before a forward, resume and token closes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.satori.adapter import SatoriAdapter
from adapters.satori.codec import decode_content, encode_content
from adapters.satori.settings import SatoriSettings
from core.event import ChatType, Event, MessageEvent
from core.message import Forward, ForwardNode, Quote, Text
from tests.conftest import eventually, start_bot
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.satori_server import FakeSatori

BOT = "10004"
TOKEN = "satori-token"
ANSWER = "第一段\n\n第二段\n\n代码：\n    if x:\n        return 1\n结束"


def _satori_python_text(content: str) -> str:
    """What satori-python's server hands on, as the issue observed it: every raw line stripped, blank ones
    dropped; `<br/>` and entities are its elements and are decoded after that."""
    lines = [line.strip() for line in content.split("\n")]
    return _text("\n".join(line for line in lines if line))


def _text(content: str) -> str:
    return "".join(seg.text for seg in decode_content(content) if isinstance(seg, Text))


def test_blank_lines_and_indentation_survive_a_line_stripping_server() -> None:
    content = encode_content((Text(ANSWER),))
    assert "<br/><br/>" in content and "&#32;&#32;&#32;&#32;if x:" in content
    assert _text(content) == ANSWER  # Koishi-exact: the spec's decoding gives back every character
    assert _satori_python_text(content) == ANSWER
    # A single break between plain lines stays a newline, which every server keeps.
    assert encode_content((Text("一\n二"),)) == "一\n二"


def test_no_quote_before_a_forward() -> None:
    forward = Forward(nodes=(ForwardNode(sender_id=BOT, message=(Text("长回答"),)),))
    content = encode_content((Quote("77"), forward))
    assert content.startswith("<message forward>") and "<quote" not in content
    assert encode_content((Quote("77"), Text("短"))) == '<quote id="77"/>短'


class Running:
    def __init__(self, app: Any, server: FakeSatori) -> None:
        self.app = app
        self.server = server

    def creates(self) -> list[dict[str, Any]]:
        return [c for c in self.server.calls if c["api"] == "message.create"]


@pytest.fixture
async def satori(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def start(
        extra: dict[str, Any] | None = None, token: str = TOKEN, close: tuple[int, bytes] | None = None
    ) -> Running:
        server = FakeSatori(BOT, token=TOKEN)
        if close is not None:
            server.token_close = close
        url = await server.start()
        app = await start_bot(write_config({"mirai": None, "satori": {"url": url, "token": token}, **(extra or {})}))
        started.append(Running(app, server))
        return started[-1]

    yield start
    for s in started:
        await s.app.stop()
        await s.server.stop()


async def test_round_trip_on_the_wire(satori: Any, fake_llm: FakeOpenAI) -> None:
    s = await satori({"response": {"forward_threshold": 300}})
    server = s.server
    await eventually(lambda: s.app.adapters["satori"].connected, timeout=10)
    fake_llm.reply_fn = lambda body: ANSWER
    await server.push(server.message_event("30001", "20002", f'<at id="{BOT}"/> 写段代码', "501", guild_id="30001"))
    await eventually(lambda: len(s.creates()) >= 1, timeout=10)
    content = s.creates()[0]["body"]["content"]
    assert content.startswith('<quote id="501"/>')  # a short group answer still replies to its question
    assert _text(content) == ANSWER and _satori_python_text(content) == ANSWER

    fake_llm.reply_fn = lambda body: "\n\n".join("很长的段落。" * 30 for _ in range(4))
    await server.push(server.message_event("30001", "20002", f'<at id="{BOT}"/> 写长文', "502", guild_id="30001"))
    await eventually(lambda: len(s.creates()) >= 2, timeout=10)
    long = s.creates()[1]["body"]["content"]
    assert long.startswith("<message forward>") and "<quote" not in long
    assert len(s.creates()) == 2  # one message: no empty reply flushed in front of it


async def test_identify_sends_sn_and_sequence(satori: Any, fake_llm: FakeOpenAI) -> None:
    s = await satori()
    server = s.server
    await eventually(lambda: s.app.adapters["satori"].connected, timeout=10)
    await server.push(server.message_event("private:20001", "20001", "你好", "601"))
    await eventually(lambda: len(s.creates()) >= 1, timeout=10)
    sn = s.app.adapters["satori"].sn
    await server.drop()
    await server.wait_identifies(2, timeout=15)
    assert server.identifies[-1]["sn"] == sn and server.identifies[-1]["sequence"] == sn


@pytest.mark.parametrize("close", [(3000, b"Unauthorized"), (4004, b"invalid token")])
async def test_token_closes_give_the_token_hint(satori: Any, log_lines: list[str], close: tuple[int, bytes]) -> None:
    s = await satori(token="wrong", close=close)
    await asyncio.wait_for(s.app.all_stopped.wait(), timeout=10)
    assert any(str(close[0]) in line and "[satori] token" in line for line in log_lines)


# --- Chronocat's recorded events ------------------------------------------------------------------

CHRONOCAT = json.loads((Path(__file__).parent / "samples" / "satori" / "chronocat.json").read_text("utf-8"))["events"]


@pytest.mark.parametrize("case", CHRONOCAT, ids=[case["name"] for case in CHRONOCAT])
async def test_chronocat_events_decode(case: dict[str, Any]) -> None:
    events: list[Event] = []

    async def sink(event: Event) -> None:
        events.append(event)

    adapter = SatoriAdapter("satori", SatoriSettings(platform="chronocat"), sink)
    adapter.self_id = BOT
    await adapter.on_event(case["event"])
    [event] = events
    expect = case["expect"]
    assert isinstance(event, MessageEvent) and event.platform == "qq" and event.chat_type is ChatType.GROUP
    assert (event.user_id, event.group_id, event.message_id) == ("10000", "100000000", "1000000000000000000")
    assert [type(seg).__name__ for seg in event.message] == expect["kinds"]
    assert "".join(seg.text for seg in event.message if isinstance(seg, Text)) == expect["text"]
    assert event.sender_name == expect["sender_name"]
    quotes = [seg for seg in event.message if isinstance(seg, Quote)]
    if expect["quote"] is None:
        assert quotes == []
    else:
        [quote] = quotes
        assert (quote.message_id, quote.sender_id) == (expect["quote"]["id"], expect["quote"]["sender_id"])
        assert "".join(seg.text for seg in quote.origin if isinstance(seg, Text)) == expect["quote"]["text"]
