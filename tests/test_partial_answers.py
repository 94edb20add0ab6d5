"""A streamed answer that breaks after parts reached the user is stored, marked, so "继续" has context."""

from __future__ import annotations

from typing import Any

from conversation.chat import INTERRUPTED_MARK
from conversation.job import FAILURE_REASONS
from tests import test_e2e_llm as e2e
from tests.fakes.openai_server import FakeOpenAI
from tests.test_e2e_llm import conversation_of

launch = e2e.launch  # the fixture that starts bots from config overrides


async def test_the_parts_that_reached_the_user_are_stored_marked(
    launch: Any, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    bot = await launch({"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 0}})
    fake_llm.reply_fn = lambda body: "第一段讲原理。\n\n第二段讲例子。\n\n第三段不会到达。"
    fake_llm.chunk_chars = 5
    fake_llm.break_stream_after = 5  # "第一段讲原理。" and "第二段讲例子。" go out, then the connection drops
    texts = await bot.say("讲讲这个", replies=3)
    assert texts[:2] == ["第一段讲原理。", "第二段讲例子。"]
    assert texts[2].startswith("（回答中断了") and FAILURE_REASONS["interrupted"] in texts[2]
    assert any(
        "2 message(s) with 14 characters of the answer reached the user; stored them marked as interrupted" in line
        for line in log_lines
    )

    fake_llm.break_stream_after = None
    fake_llm.reply_fn = lambda body: "第三段：接着讲。"
    await bot.say("继续")
    assert conversation_of(fake_llm.requests[-1]) == [
        ("user", "讲讲这个"),
        ("assistant", f"第一段讲原理。\n\n第二段讲例子。\n\n{INTERRUPTED_MARK}"),
        ("user", "继续"),
    ]


async def test_nothing_is_stored_or_claimed_sent_when_nothing_reached_the_user(
    launch: Any, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    # a long buffer_delay holds the parts back: the break comes before any of them went out
    bot = await launch({"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 60}})
    fake_llm.reply_fn = lambda body: "第一段讲原理。\n\n第二段讲例子。"
    fake_llm.chunk_chars = 5
    fake_llm.break_stream_after = 3
    [text] = await bot.say("讲讲这个")
    assert FAILURE_REASONS["interrupted"] in text
    assert any("no part of the answer had reached the user" in line for line in log_lines)
    assert not any("reached the user; stored" in line for line in log_lines)

    fake_llm.break_stream_after = None
    await bot.say("再试一次")
    assert conversation_of(fake_llm.requests[-1]) == [("user", "再试一次")]


async def test_an_answer_given_up_after_parts_went_out_is_stored_marked(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch(
        {
            "openai": {"gpt_params": {"stream": True}},
            "response": {"buffer_delay": 0, "timeout": 0.6, "max_timeout": 1.2},
        }
    )
    fake_llm.reply_fn = lambda body: "第一段。\n\n" + "慢" * 200
    fake_llm.chunk_chars = 6
    fake_llm.chunk_delay = 0.1  # about four seconds for the whole answer: longer than max_timeout
    texts = await bot.say("慢慢说", replies=2)
    assert texts == ["第一段。", "啊哦，这个问题有点难，让我想了好久也没想明白。试试换个问法？"]
    fake_llm.chunk_delay = 0.0
    fake_llm.reply_fn = lambda body: "好"
    await bot.say("继续")
    assert conversation_of(fake_llm.requests[-1])[:2] == [
        ("user", "慢慢说"),
        ("assistant", f"第一段。\n\n{INTERRUPTED_MARK}"),
    ]
