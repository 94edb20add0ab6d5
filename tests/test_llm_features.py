"""Backend features beyond plain failover: cool-downs, slow and dead accounts, streaming, reasoning,
context limits, vision parts and drawing — all against the fake OpenAI server on 127.0.0.1."""
# ruff: noqa: F811 - the fixtures are imported from test_llm and named as parameters

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from llm.base import AllAccountsFailed, ChatTurn
from tests.fakes.openai_server import TINY_PNG, FakeOpenAI
from tests.test_llm import HELLO, Factory, backend, fake, log_lines  # noqa: F401

PNG_DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_slow_account_is_left_for_another_and_then_skipped(fake: FakeOpenAI, backend: Factory) -> None:
    fake.model_latency["slow-model"] = 5.0
    model = backend(
        accounts=[
            {"name": "slow", "api_key": "k1", "model": "slow-model"},
            {"name": "quick", "api_key": "k2", "model": "m2"},
        ],
        timeout=0.3,
    )
    started = time.perf_counter()
    assert (await model.complete(HELLO)).account == "quick"
    assert time.perf_counter() - started < 2.0  # one timeout, no retries on the slow account
    started = time.perf_counter()
    for _ in range(3):  # round robin would pick "slow" again, but it is cooling down
        assert (await model.complete(HELLO)).account == "quick"
    assert time.perf_counter() - started < 1.0
    assert fake.authorizations() == ["k1", "k2", "k2", "k2", "k2"]


async def test_dead_account_costs_no_backoff_when_another_is_ready(fake: FakeOpenAI, backend: Factory) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    model = backend(accounts=[{"name": "dead", "api_key": "k1", "api_endpoint": dead}, {"name": "ok", "api_key": "k2"}])
    started = time.perf_counter()
    assert (await model.complete(HELLO)).account == "ok"
    assert time.perf_counter() - started < 0.5


async def test_only_account_is_still_retried_after_a_timeout(fake: FakeOpenAI, backend: Factory) -> None:
    fake.hang_next(1)
    reply = await backend(timeout=0.3).complete(HELLO)
    assert reply.text == "echo: hello" and len(fake.requests) == 2


async def test_context_limit_is_its_own_kind_and_not_failed_over(fake: FakeOpenAI, backend: Factory) -> None:
    fake.context_limit = 10
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2")).complete([ChatTurn("user", "x" * 50)])
    assert caught.value.kind == "context_length"
    assert len(fake.requests) == 1


async def test_stream_hands_out_text_and_reasoning_as_think_block(fake: FakeOpenAI, backend: Factory) -> None:
    fake.reasoning = "先想一想"
    fake.chunk_chars = 2
    pieces: list[str] = []

    async def sink(piece: str) -> None:
        pieces.append(piece)

    reply = await backend(stream=True).complete(HELLO, on_delta=sink)
    assert "".join(pieces) == reply.text == "<think>\n先想一想\n</think>\n\necho: hello"
    assert len(pieces) > 3


async def test_non_stream_reasoning_is_wrapped_the_same_way(fake: FakeOpenAI, backend: Factory) -> None:
    fake.reasoning = "thinking"
    reply = await backend(stream=False).complete(HELLO)
    assert reply.text == "<think>\nthinking\n</think>\n\necho: hello"


async def test_broken_stream_after_text_went_out_is_partial_and_not_failed_over(
    fake: FakeOpenAI, backend: Factory
) -> None:
    fake.chunk_chars = 2
    fake.break_stream_after = 2
    pieces: list[str] = []

    async def sink(piece: str) -> None:
        pieces.append(piece)

    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2"), stream=True).complete(HELLO, on_delta=sink)
    assert caught.value.partial is True
    assert "".join(pieces) == "echo"
    assert fake.authorizations() == ["k1"]  # another account would repeat what the user already saw


async def test_broken_stream_before_any_text_fails_over(fake: FakeOpenAI, backend: Factory) -> None:
    fake.break_stream_after = 0
    model = backend(("k1", "k2"), stream=True, max_retries=0)
    with pytest.raises(AllAccountsFailed) as caught:
        await model.complete(HELLO, on_delta=None)
    assert caught.value.partial is False
    assert fake.authorizations() == ["k1", "k2"]


async def test_images_become_parts_only_for_vision_accounts(fake: FakeOpenAI, backend: Factory) -> None:
    turns = [ChatTurn("user", "这是什么[图片]", images=(PNG_DATA_URL,))]
    model = backend(
        accounts=[
            {"name": "eyes", "api_key": "k1", "model": "gpt-4o", "vision": True},
            {"name": "blind", "api_key": "k2", "model": "text"},
        ]
    )
    await model.complete(turns)
    assert model.vision_available
    fake.fail_key("k1", 401)  # with the vision account gone, the other one still answers the text
    await model.complete(turns)
    with_eyes, _, blind = (r["body"]["messages"][-1]["content"] for r in fake.requests)
    assert with_eyes == [
        {"type": "text", "text": "这是什么[图片]"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
    ]
    assert blind == "这是什么[图片]"
    assert not model.vision_available


async def test_model_override_prefers_accounts_that_name_it(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(
        accounts=[
            {"name": "a", "api_key": "k1", "model": "m1"},
            {"name": "b", "api_key": "k2", "model": "m2", "models": ["deepseek-chat"]},
        ]
    )
    for _ in range(2):
        reply = await model.complete(HELLO, model="deepseek-chat")
        assert (reply.account, reply.model) == ("b", "deepseek-chat")
    assert model.account_for_model("deepseek-chat") == "b" and model.default_model("a") == "m1"


async def test_draw_returns_base64_or_url_and_fails_over(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(
        accounts=[
            {"name": "text", "api_key": "k0"},
            {"name": "painter", "api_key": "k1", "image_model": "dall-e-3"},
            {"name": "painter2", "api_key": "k2", "image_model": "flux"},
        ]
    )
    image = await model.draw("一只猫")
    assert image.base64 and image.account in ("painter", "painter2")
    fake.image_format = "url"
    fake.fail_key("k1", 401)
    fake.fail_key("k2", 401)
    with pytest.raises(AllAccountsFailed) as caught:
        await model.draw("一只狗")
    assert caught.value.kind == "auth"
    bodies: list[dict[str, Any]] = [r["body"] for r in fake.image_requests]
    assert bodies[0]["prompt"] == "一只猫" and bodies[0]["size"] == "1024x1024"
    assert {b["model"] for b in bodies} == {"dall-e-3", "flux"}


async def test_draw_by_url(fake: FakeOpenAI, backend: Factory) -> None:
    fake.image_format = "url"
    image = await backend(accounts=[{"name": "p", "api_key": "k1", "image_model": "dall-e-3"}]).draw("猫")
    assert image.url.endswith("/files/drawn.png") and not image.base64
    assert TINY_PNG.startswith(b"\x89PNG")


async def test_no_drawing_account_is_unsupported(fake: FakeOpenAI, backend: Factory) -> None:
    with pytest.raises(AllAccountsFailed) as caught:
        await backend().draw("猫")
    assert caught.value.kind == "unsupported" and fake.image_requests == []


# --- how streams end and how context overflows are worded --------------------------------------------


async def test_stream_ending_with_done_but_no_finish_reason_is_a_whole_answer(
    fake: FakeOpenAI, backend: Factory
) -> None:
    fake.finish_reason = False
    reply = await backend(("k1", "k2"), stream=True).complete(HELLO)
    assert reply.text == "echo: hello"
    assert fake.authorizations() == ["k1"]


async def test_stream_closing_cleanly_without_done_or_finish_reason_is_a_whole_answer(
    fake: FakeOpenAI, backend: Factory
) -> None:
    fake.finish_reason = False
    fake.send_done = False
    reply = await backend(stream=True).complete(HELLO)
    assert reply.text == "echo: hello"


async def test_empty_200_stream_is_context_length_and_not_failed_over(fake: FakeOpenAI, backend: Factory) -> None:
    fake.reply_fn = lambda body: ""
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2"), stream=True).complete(HELLO)
    assert caught.value.kind == "context_length"
    assert caught.value.partial is False
    assert fake.authorizations() == ["k1"]  # the caller retries with a smaller window instead


async def test_empty_200_non_stream_answer_is_empty(fake: FakeOpenAI, backend: Factory) -> None:
    fake.reply_fn = lambda body: ""
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(stream=False, max_retries=0).complete(HELLO)
    assert caught.value.kind == "empty"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        # OpenAI
        (400, "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."),
        # llama.cpp server, new and old wordings
        (400, "the request exceeds the available context size, try increasing it"),
        (500, "the request exceeds the available context size, try increasing it"),
        (400, "request (2065 tokens) exceeds the available context size (2048 tokens), try increasing it"),
        # vLLM
        (400, "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."),
        # Ollama
        (400, "the input length exceeds the context length"),
        # DashScope (Qwen)
        (400, "Range of input length should be [1, 30720]"),
        # DeepSeek
        (400, "This model's maximum context length is 65536 tokens. However, you requested 70000 tokens."),
    ],
)
async def test_provider_context_overflow_wordings_are_context_length(
    fake: FakeOpenAI, backend: Factory, status: int, message: str
) -> None:
    fake.fail_next(status, message=message)
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2"), stream=True).complete(HELLO)
    assert caught.value.kind == "context_length"
    assert fake.authorizations() == ["k1"]


async def test_context_overflow_reported_inside_a_200_stream_is_context_length(
    fake: FakeOpenAI, backend: Factory
) -> None:
    fake.stream_error = "the request exceeds the available context size, try increasing it"
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2"), stream=True).complete(HELLO)
    assert caught.value.kind == "context_length"
    assert fake.authorizations() == ["k1"]


async def test_other_500_is_still_a_server_error(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_next(500, times=3, message="CUDA out of memory")
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(max_retries=2).complete(HELLO)
    assert caught.value.kind == "server"
