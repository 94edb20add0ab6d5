"""The OpenAI-compatible backend against the fake OpenAI server over real loopback sockets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
import pytest_asyncio
from loguru import logger

from core.backoff import Backoff
from core.config import OpenAISettings
from core.errors import LLMError
from llm.base import AllAccountsFailed, ChatModel, ChatTurn
from llm.openai_compat import OpenAICompatible, classify, retry_after_seconds
from tests.fakes.openai_server import FakeOpenAI

HELLO = [ChatTurn("user", "hello")]
Factory = Callable[..., OpenAICompatible]


def fast_backoff() -> Backoff:
    return Backoff(min_delay=0.01, max_delay=0.02)


def make_settings(
    base_url: str,
    keys: tuple[str, ...] = ("k1",),
    *,
    max_retries: int = 2,
    accounts: list[dict[str, Any]] | None = None,
    **gpt_params: Any,
) -> OpenAISettings:
    """Settings with one account per key, named acc1, acc2, ..., all on `base_url`."""
    entries = accounts or [{"api_key": key, "name": f"acc{i + 1}", "model": "m1"} for i, key in enumerate(keys)]
    settings = OpenAISettings.model_validate(
        {
            "accounts": entries,
            "gpt_params": {"stream": False, "timeout": 5.0, **gpt_params},
            "max_retries": max_retries,
        }
    )
    for account in settings.accounts:
        account.api_endpoint = account.api_endpoint or base_url
    return settings


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def backend(fake: FakeOpenAI) -> AsyncIterator[Factory]:
    """Build backends on the fake server (fast backoff); all are closed after the test."""
    built: list[OpenAICompatible] = []

    def build(keys: tuple[str, ...] = ("k1",), **kwargs: Any) -> OpenAICompatible:
        cap = kwargs.pop("retry_after_cap", 20.0)
        model = OpenAICompatible(
            make_settings(fake.base_url, keys, **kwargs), backoff_factory=fast_backoff, retry_after_cap=cap
        )
        built.append(model)
        return model

    yield build
    for model in built:
        await model.close()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru line emitted during the test as 'LEVEL adapter message'."""
    lines: list[str] = []

    def sink(message: Any) -> None:
        record = message.record
        lines.append(f"{record['level'].name} {record['extra'].get('adapter')} {record['message']}")

    handler = logger.add(sink, level="DEBUG", format="{message}")
    yield lines
    logger.remove(handler)


async def elapsed(call: Awaitable[Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await call
    return result, time.perf_counter() - started


# --- replies ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_non_stream_reply(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(stream=False)
    assert isinstance(model, ChatModel)
    reply = await model.complete(HELLO)
    assert (reply.text, reply.account, reply.model) == ("echo: hello", "acc1", "m1")
    assert fake.requests[0]["body"]["stream"] is False
    assert fake.authorizations() == ["k1"]


@pytest.mark.asyncio
async def test_stream_reply_joins_every_chunk(fake: FakeOpenAI, backend: Factory) -> None:
    fake.chunk_chars = 3
    model = backend(stream=True)
    reply = await model.complete([ChatTurn("user", "你好，这是一条比较长的消息 with words")])
    assert reply.text == "echo: 你好，这是一条比较长的消息 with words"
    assert fake.requests[0]["body"]["stream"] is True


@pytest.mark.asyncio
async def test_stream_reply_across_separate_writes(fake: FakeOpenAI, backend: Factory) -> None:
    fake.chunk_delay = 0.005  # each SSE frame in its own TCP write
    reply = await backend(stream=True).complete(HELLO)
    assert reply.text == "echo: hello"


@pytest.mark.asyncio
async def test_history_reaches_server_in_order_system_first(fake: FakeOpenAI, backend: Factory) -> None:
    turns = [
        ChatTurn("system", "you are a cat"),
        ChatTurn("user", "one"),
        ChatTurn("assistant", "meow one"),
        ChatTurn("user", "two"),
    ]
    reply = await backend().complete(turns)
    assert reply.text == "echo: two"
    assert fake.requests[0]["body"]["messages"] == [
        {"role": "system", "content": "you are a cat"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "meow one"},
        {"role": "user", "content": "two"},
    ]


@pytest.mark.asyncio
async def test_gpt_params_sent_and_max_tokens_not_sent(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(temperature=0.7, top_p=0.9, presence_penalty=0.1, frequency_penalty=0.2, max_tokens=1234)
    await model.complete(HELLO)
    body = fake.requests[0]["body"]
    assert (body["temperature"], body["top_p"]) == (0.7, 0.9)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.1, 0.2)
    assert "max_tokens" not in body
    assert "max_completion_tokens" not in body


@pytest.mark.asyncio
async def test_model_override_reaches_server(fake: FakeOpenAI, backend: Factory) -> None:
    reply = await backend().complete(HELLO, model="other-model")
    assert fake.requests[0]["body"]["model"] == "other-model"
    assert reply.model == "other-model"


# --- retries and failover --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_single_500_then_success_stays_on_one_account(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_next(500)
    reply = await backend(("k1", "k2")).complete(HELLO)
    assert (reply.text, reply.account) == ("echo: hello", "acc1")
    assert fake.authorizations() == ["k1", "k1"]


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(fake: FakeOpenAI, backend: Factory, status: int) -> None:
    fake.fail_next(status, retry_after=0.3)
    reply, took = await elapsed(backend().complete(HELLO))
    assert reply.text == "echo: hello"
    assert 0.28 <= took < 2.0  # the fast backoff alone would have waited 0.01 s
    assert fake.authorizations() == ["k1", "k1"]


@pytest.mark.asyncio
async def test_retry_after_longer_than_the_cap_fails_fast_instead_of_waiting(
    fake: FakeOpenAI, backend: Factory
) -> None:
    fake.fail_next(429, retry_after=30)
    with pytest.raises(AllAccountsFailed) as caught:
        await elapsed(backend(retry_after_cap=0.05).complete(HELLO))
    assert caught.value.kind == "rate_limit"
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_429_cools_the_account_down_and_moves_on(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(("k1", "k2"))
    fake.fail_next(429, retry_after=30)
    assert (await model.complete(HELLO)).account == "acc2"
    # round robin would start at acc2 now anyway; the third request shows acc1 is still skipped
    assert (await model.complete(HELLO)).account == "acc2"
    assert (await model.complete(HELLO)).account == "acc2"
    assert fake.authorizations() == ["k1", "k2", "k2", "k2"]


@pytest.mark.asyncio
async def test_401_disables_account_and_logs_name_not_key(
    fake: FakeOpenAI, backend: Factory, log_lines: list[str]
) -> None:
    secret = "sk-this-key-must-never-be-logged"
    fake.fail_key(secret, 401)
    model = backend((secret, "k2"))
    first = await model.complete(HELLO)
    second = await model.complete(HELLO)
    assert (first.account, second.account) == ("acc2", "acc2")
    assert fake.authorizations() == [secret, "k2", "k2"]  # the 401 was not retried, then skipped
    assert model.disabled_accounts() == ["acc1"]
    errors = [line for line in log_lines if line.startswith("ERROR")]
    assert len(errors) == 1
    assert "acc1" in errors[0] and errors[0].startswith("ERROR llm ")
    assert not any(secret in line for line in log_lines)


@pytest.mark.asyncio
async def test_403_disables_account_too(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_key("k1", 403)
    model = backend(("k1", "k2"))
    assert (await model.complete(HELLO)).account == "acc2"
    assert model.disabled_accounts() == ["acc1"]


@pytest.mark.asyncio
async def test_all_accounts_disabled_raises_auth(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_key("k1", 401)
    fake.fail_key("k2", 401)
    model = backend(("k1", "k2"))
    with pytest.raises(AllAccountsFailed) as first:
        await model.complete(HELLO)
    assert first.value.kind == "auth"
    with pytest.raises(AllAccountsFailed) as second:
        await model.complete(HELLO)
    assert second.value.kind == "auth"
    assert len(fake.requests) == 2  # the second request made no call at all


@pytest.mark.asyncio
async def test_all_accounts_500_raise_server(fake: FakeOpenAI, backend: Factory, log_lines: list[str]) -> None:
    fake.fail_next(500, times=100)
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2")).complete(HELLO)
    assert isinstance(caught.value, LLMError)
    assert (caught.value.kind, caught.value.status) == ("server", 500)
    assert fake.authorizations() == ["k1"] * 3 + ["k2"] * 3  # max_retries=2: three attempts each
    warnings = [line for line in log_lines if line.startswith("WARNING llm ")]
    assert len(warnings) == 6
    assert "attempt 1/3" in warnings[0] and "hello" not in "".join(log_lines)


@pytest.mark.asyncio
async def test_bad_request_fails_at_once_without_failover(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_next(400)
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(("k1", "k2")).complete(HELLO)
    assert (caught.value.kind, caught.value.status) == ("bad_request", 400)
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_404_moves_to_next_account_without_retry(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_next(404)
    reply = await backend(("k1", "k2")).complete(HELLO)
    assert reply.account == "acc2"
    assert fake.authorizations() == ["k1", "k2"]


@pytest.mark.asyncio
async def test_hang_times_out_then_fails_over(fake: FakeOpenAI, backend: Factory) -> None:
    fake.hang_next(1)
    reply, took = await elapsed(backend(("k1", "k2"), max_retries=0, timeout=0.5).complete(HELLO))
    assert reply.account == "acc2"
    assert 0.45 <= took < 3.0


@pytest.mark.asyncio
async def test_stalled_stream_times_out_then_fails_over(backend: Factory) -> None:
    slow = FakeOpenAI()
    slow.chunk_delay = 1.0  # first frame, then silence longer than the read timeout
    slow_url = await slow.start()
    try:
        model = backend(
            max_retries=0,
            stream=True,
            timeout=0.3,
            accounts=[
                {"api_key": "k1", "name": "slow", "model": "m1", "api_endpoint": slow_url},
                {"api_key": "k2", "name": "quick", "model": "m1"},
            ],
        )
        reply = await model.complete(HELLO)
        assert reply.account == "quick"
    finally:
        await slow.stop()


@pytest.mark.asyncio
async def test_connection_refused_fails_over(fake: FakeOpenAI, backend: Factory) -> None:
    closed = FakeOpenAI()
    dead_url = await closed.start()
    await closed.stop()  # nothing listens on that port any more
    model = backend(
        max_retries=1,
        accounts=[
            {"api_key": "k1", "name": "dead", "model": "m1", "api_endpoint": dead_url},
            {"api_key": "k2", "name": "alive", "model": "m1"},
        ],
    )
    assert (await model.complete(HELLO)).account == "alive"


@pytest.mark.asyncio
async def test_empty_non_stream_reply_is_its_own_kind_and_fails_over(fake: FakeOpenAI, backend: Factory) -> None:
    answers = iter(["", "  ", "finally"])
    fake.reply_fn = lambda body: next(answers)
    reply = await backend(("k1", "k2", "k3"), stream=False).complete(HELLO)
    assert reply.text == "finally"
    assert fake.authorizations() == ["k1", "k2", "k3"]
    fake.reply_fn = lambda body: ""
    with pytest.raises(AllAccountsFailed) as caught:
        await backend(stream=False).complete(HELLO)
    assert caught.value.kind == "empty"


# --- account choice --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_round_robin_alternates_starting_account(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(("k1", "k2"))
    accounts = [(await model.complete(HELLO)).account for _ in range(4)]
    assert accounts == ["acc1", "acc2", "acc1", "acc2"]
    assert fake.authorizations() == ["k1", "k2", "k1", "k2"]


@pytest.mark.asyncio
async def test_named_account_is_tried_first(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(("k1", "k2", "k3"))
    assert (await model.complete(HELLO, account="acc3")).account == "acc3"
    fake.fail_next(500, times=3)
    assert (await model.complete(HELLO, account="acc2")).account == "acc1"  # acc2 failed over to the rest
    assert (await model.complete(HELLO, account="nobody")).account == "acc1"  # unknown name: round robin


@pytest.mark.asyncio
async def test_proxy_setting_routes_requests_through_the_proxy(fake: FakeOpenAI, backend: Factory) -> None:
    # the fake answers absolute-form proxy requests, so a host that does not exist still gets a reply
    proxy = fake.base_url.removesuffix("/v1")
    model = backend(
        accounts=[{"api_key": "k1", "model": "m1", "api_endpoint": "http://llm.invalid/v1", "proxy": proxy}]
    )
    reply = await model.complete(HELLO)
    assert (reply.text, reply.account) == ("echo: hello", "account1")


@pytest.mark.asyncio
async def test_unusable_proxy_disables_only_that_account(
    fake: FakeOpenAI, backend: Factory, log_lines: list[str]
) -> None:
    model = backend(
        accounts=[
            {"api_key": "k1", "name": "proxied", "model": "m1", "proxy": "bogus://user:hunter2@proxy:1"},
            {"api_key": "k2", "name": "direct", "model": "m1"},
        ]
    )
    assert (await model.complete(HELLO)).account == "direct"
    assert model.disabled_accounts() == ["proxied"]
    assert not any("hunter2" in line for line in log_lines)


@pytest.mark.asyncio
async def test_unparsable_endpoint_disables_only_that_account(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(
        accounts=[
            {"api_key": "k1", "name": "broken", "model": "m1", "api_endpoint": "http://[::1"},
            {"api_key": "k2", "name": "fine", "model": "m1"},
        ]
    )
    assert (await model.complete(HELLO)).account == "fine"
    assert model.disabled_accounts() == ["broken"]
    assert (await model.check())[0] == ("broken", False, "network: api_endpoint: not a valid URL")


@pytest.mark.asyncio
async def test_braces_in_account_name_do_not_break_logging(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_next(500)
    model = backend(accounts=[{"api_key": "k1", "name": "my {team}", "model": "m1"}])
    assert (await model.complete(HELLO)).account == "my {team}"


@pytest.mark.asyncio
async def test_close_then_use_again(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend()
    await model.complete(HELLO)
    await model.close()
    await model.close()
    assert (await model.complete(HELLO)).text == "echo: hello"


# --- check -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_check_reports_each_account(fake: FakeOpenAI, backend: Factory) -> None:
    fake.fail_key("bad-key", 401)
    results = await backend(("k1", "bad-key")).check()
    assert [(name, ok) for name, ok, _ in results] == [("acc1", True), ("acc2", False)]
    assert "m1" in results[0][2]
    assert results[1][2] == "auth: HTTP 401"
    assert [r["body"]["messages"] for r in fake.requests] == [[{"role": "user", "content": "ping"}]] * 2
    # one token proves the account works; a looping model must not run until its context is full
    assert [r["body"]["max_tokens"] for r in fake.requests] == [1, 1]


@pytest.mark.asyncio
async def test_check_explains_a_404_from_an_endpoint_without_v1(fake: FakeOpenAI) -> None:
    settings = make_settings(fake.base_url.removesuffix("/v1"))
    model = OpenAICompatible(settings)
    try:
        [(name, ok, detail)] = await model.check()
    finally:
        await model.close()
    assert (name, ok) == ("acc1", False)
    assert detail.startswith("bad_request: HTTP 404: 接口地址通常应以 /v1 结尾")
    assert "endpoint should usually end in /v1" in detail
    assert fake.requests == []  # the fake only answers under /v1


# --- pure helpers ----------------------------------------------------------------------------------


def test_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 01 Jan 2025 12:00:05 GMT"}, now) == 5.0
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "nan"}) is None
    assert retry_after_seconds({}) is None


def test_classify_timeouts_and_connection_errors() -> None:
    import httpx2

    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert classify(openai.APITimeoutError(request)).kind == "timeout"
    assert classify(openai.APIConnectionError(request=request)).kind == "network"
    assert classify(ValueError("odd body")).kind == "server"
    assert not classify(openai.APIConnectionError(request=request)).request_fault
