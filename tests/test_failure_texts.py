"""Every failure kind has its own short Chinese text and log line; an empty 200 stream retries smaller."""

from __future__ import annotations

from typing import Any

from conversation.job import FAILURE_LOGS, FAILURE_REASONS
from tests import test_e2e_llm as e2e
from tests.conftest import free_port
from tests.fakes.openai_server import FakeOpenAI
from tests.test_e2e_llm import conversation_of

launch = e2e.launch  # the fixture that starts bots from config overrides

KINDS = ("network", "timeout", "rate_limit", "auth", "context_length", "empty", "interrupted")


def test_each_kind_has_its_own_text_and_log_line() -> None:
    texts = [FAILURE_REASONS[kind] for kind in KINDS]
    logs = [FAILURE_LOGS[kind] for kind in KINDS]
    assert len(set(texts)) == len(KINDS) and len(set(logs)) == len(KINDS)
    assert all(len(text) <= 30 for text in texts)  # short enough for a chat line
    assert set(FAILURE_REASONS) == set(FAILURE_LOGS)


async def test_each_failure_reaches_the_user_with_its_own_text(
    launch: Any, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    bot = await launch({"openai": {"max_retries": 0, "gpt_params": {"timeout": 0.5}}})
    fake_llm.fail_next(429)
    [text] = await bot.say("限流")
    assert FAILURE_REASONS["rate_limit"] in text
    fake_llm.hang_next()
    [text] = await bot.say("超时", user=20002)
    assert FAILURE_REASONS["timeout"] in text
    fake_llm.reply_fn = lambda body: ""
    [text] = await bot.say("空回答", user=20003)
    assert FAILURE_REASONS["empty"] in text
    fake_llm.reply_fn = lambda body: "ok"
    fake_llm.context_limit = 1
    [text] = await bot.say("太长了", user=20004)
    assert FAILURE_REASONS["context_length"] in text
    fake_llm.context_limit = None
    fake_llm.fail_key("sk-test-1", 401)
    [text] = await bot.say("换了 key", user=20005)
    assert FAILURE_REASONS["auth"] in text
    for kind in ("rate_limit", "timeout", "empty", "context_length", "auth"):
        assert any(FAILURE_LOGS[kind] in line for line in log_lines), kind


async def test_an_unreachable_server_is_cannot_connect(launch: Any, log_lines: list[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    bot = await launch(
        {
            "openai": {
                "max_retries": 0,
                "accounts": [{"name": "main", "api_key": "sk-test-1", "api_endpoint": dead, "model": "m1"}],
            }
        }
    )
    [text] = await bot.say("有人吗")
    assert FAILURE_REASONS["network"] in text
    assert any(FAILURE_LOGS["network"] in line for line in log_lines)


async def test_a_stream_breaking_before_anything_was_sent_is_interrupted(
    launch: Any, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    # buffer_delay holds the parts back, so the break comes before any of them reached the user
    bot = await launch({"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 60}})
    fake_llm.reply_fn = lambda body: "前半段。\n\n后半段。"
    fake_llm.chunk_chars = 3
    fake_llm.break_stream_after = 2
    [text] = await bot.say("会断")
    assert FAILURE_REASONS["interrupted"] in text
    assert FAILURE_REASONS["network"] not in text
    assert any(FAILURE_LOGS["interrupted"] in line for line in log_lines)


async def test_an_empty_200_stream_retries_with_a_smaller_window(launch: Any, fake_llm: FakeOpenAI) -> None:
    bot = await launch({"openai": {"gpt_params": {"stream": True}}})
    for n in range(6):
        await bot.say(f"第{n}句话" + "很长" * 20)
    # llama.cpp's way to refuse a prompt over its context: HTTP 200 and a stream without any text
    fake_llm.context_limit = 300
    fake_llm.overflow_empty = True
    [reply] = await bot.say("还记得吗")
    assert reply == "echo: 还记得吗"
    refused, accepted = fake_llm.requests[-2:]
    assert len(conversation_of(accepted)) < len(conversation_of(refused))
    # later messages of the session keep working (each retries smaller when it must)
    for n in range(3):
        [reply] = await bot.say(f"接着说{n}")
        assert reply == f"echo: 接着说{n}"
