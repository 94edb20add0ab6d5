"""Completion caps end to end: the limit each request carries, and a looping model cut at max_reply_chars."""

from __future__ import annotations

from typing import Any

from tests import test_e2e_llm as e2e
from tests.conftest import eventually
from tests.fakes.mirai_peer import sent_text
from tests.fakes.openai_server import FakeOpenAI
from tests.test_e2e_llm import accounts, conversation_of

launch = e2e.launch  # the fixture that starts bots from config overrides

NOTE = "（回答过长，已截断）"


def texts(bot: Any) -> list[str]:
    """Every text the bot has sent so far."""
    return [sent_text(c) for c in bot.mirai.commands if sent_text(c)]


def limit_of(request: dict[str, Any]) -> object:
    return request["body"].get("max_tokens")


async def test_the_limit_is_the_context_left_after_the_prompt(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch({"openai": {"gpt_params": {"max_tokens": 2000, "min_tokens": 500}}})
    await bot.say("你好")
    limit = limit_of(fake_llm.requests[-1])
    # the context minus the (conservatively scaled) prompt: a little under 2000
    assert isinstance(limit, int) and 1900 < limit < 2000


async def test_configured_caps_lower_the_limit_and_the_account_cap_wins(launch: Any, fake_llm: FakeOpenAI) -> None:
    extra = accounts(
        fake_llm,
        {"name": "capped", "api_key": "sk-test-1", "model": "m1", "max_reply_tokens": 100},
        {"name": "plain", "api_key": "sk-test-2", "model": "m2"},
    )
    extra["openai"]["gpt_params"] = {"max_reply_tokens": 300}
    bot = await launch(extra)
    await bot.say("一")
    await bot.say("二")
    by_model = {r["body"]["model"]: limit_of(r) for r in fake_llm.requests}
    assert by_model == {"m1": 100, "m2": 300}


async def test_the_limit_never_goes_below_the_floor(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch({"openai": {"gpt_params": {"max_tokens": 60, "min_tokens": 0}}})
    await bot.say("你好")
    assert limit_of(fake_llm.requests[-1]) == 64


async def test_a_looping_model_is_cut_at_the_character_cap_and_stopped(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.loop_forever = True
    # a context budget this large would let the model loop for a minute; the character cap must stop it
    bot = await launch(
        {
            "openai": {"gpt_params": {"stream": True, "max_tokens": 1_000_000, "min_tokens": 1000}},
            "response": {"max_reply_chars": 500, "buffer_delay": 0},
        }
    )
    await bot.say("说点什么", replies=1)
    await eventually(lambda: any(NOTE in t for t in texts(bot)))
    answer = "".join(texts(bot))
    assert answer.endswith(NOTE)
    assert len(answer.replace(NOTE, "").replace("\n", "")) == 500
    request = fake_llm.requests[-1]
    assert isinstance(limit_of(request), int)
    assert request["body"]["stream_options"] == {"include_usage": True}
    await eventually(lambda: fake_llm.loops_active == 0)  # the model call was stopped, not left running
    assert fake_llm.loop_chunks_sent < 1000

    fake_llm.loop_forever = False
    await bot.say("下一句")
    [stored] = [content for role, content in conversation_of(fake_llm.requests[-1]) if role == "assistant"]
    assert stored.endswith("\n\n" + NOTE)
    assert len(stored) == 500 + 2 + len(NOTE)


async def test_a_long_non_streamed_answer_is_cut_too(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.reply_fn = lambda body: "长" * 5000
    bot = await launch({"response": {"max_reply_chars": 300}})
    await bot.say("写很长的东西")
    answer = "".join(texts(bot))
    assert answer == "长" * 300 + NOTE or answer == "长" * 300 + "\n\n" + NOTE


async def test_the_fake_honours_the_limit_like_a_real_server(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.loop_forever = True
    bot = await launch(
        {
            "openai": {"gpt_params": {"stream": True, "max_reply_tokens": 100}},
            "response": {"max_reply_chars": 0},
        }
    )
    [answer] = await bot.say("说点什么")
    assert len(answer) == 400  # 100 tokens at four characters a token: the server stopped there
    assert NOTE not in answer
