"""Token estimates calibrated per model from the server's reported usage keep prompts inside the context."""

from __future__ import annotations

from typing import Any

from core.tokens import DEFAULT_RATIO, RATIO_MAX, RATIO_MIN, Calibration
from tests import test_e2e_llm as e2e
from tests.fakes.openai_server import FakeOpenAI

launch = e2e.launch  # the fixture that starts bots from config overrides

CONTEXT = 2000


def real_prompt_tokens(request: dict[str, Any], per_char: float) -> float:
    """What the fake counts (and reports) for the request's prompt."""
    return sum(len(m["content"]) for m in request["body"]["messages"]) * per_char


def test_an_unknown_model_starts_conservative_then_follows_reports() -> None:
    calibration = Calibration()
    assert calibration.ratio("m") == DEFAULT_RATIO > 1
    assert calibration.observe("m", 100, 200) == 2.0  # the first report replaces the default
    assert calibration.ratio("other") == 2.0  # an unknown model gets the largest known ratio


def test_the_ratio_rises_fast_falls_slowly_and_is_clamped() -> None:
    calibration = Calibration()
    calibration.observe("m", 100, 100)
    risen = calibration.observe("m", 100, 300)
    assert 1.9 < risen < 3.0
    fallen = calibration.observe("m", 100, 100)
    assert risen - fallen < risen - 1.0  # a smaller report moves it only part of the way
    assert calibration.observe("big", 10, 1000) == RATIO_MAX
    assert calibration.observe("small", 1000, 1) == RATIO_MIN
    assert calibration.observe("m", 0, 50) == fallen  # nothing to learn from an empty estimate


async def test_a_server_counting_twice_the_estimate_is_never_overrun(launch: Any, fake_llm: FakeOpenAI) -> None:
    # this tokenizer spends two tokens per CJK character where the estimate counts one
    fake_llm.tokens_per_char = 2.0
    bot = await launch({"openai": {"gpt_params": {"stream": True, "max_tokens": CONTEXT, "min_tokens": 200}}})
    for n in range(15):
        await bot.say(f"第{n}个问题：" + "请详细解释一下这个概念" * 8)
    requests = fake_llm.requests
    assert all(r["body"]["stream_options"] == {"include_usage": True} for r in requests)
    sizes = [real_prompt_tokens(r, 2.0) for r in requests]
    # after the first exchange every prompt, with the room asked for the reply, fits the 2k context
    for request, size in zip(requests[1:], sizes[1:], strict=True):
        assert size <= CONTEXT - 150
        assert size + request["body"]["max_tokens"] <= CONTEXT + 50
    assert max(sizes) > CONTEXT * 0.6  # the history window was really used, not trivially small


async def test_non_streamed_answers_calibrate_from_the_completion_usage(launch: Any, fake_llm: FakeOpenAI) -> None:
    fake_llm.tokens_per_char = 2.0
    bot = await launch({"openai": {"gpt_params": {"stream": False, "max_tokens": CONTEXT, "min_tokens": 200}}})
    fake_llm.reply_fn = lambda body: "好"
    for n in range(15):
        await bot.say(f"第{n}个问题：" + "请详细解释一下这个概念" * 8)
    calibrated = max(real_prompt_tokens(r, 2.0) for r in fake_llm.requests[1:])
    assert calibrated <= CONTEXT - 150
