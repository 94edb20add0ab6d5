"""The account pool against the fake OpenAI server: per-account concurrency, 429 throttling, vision routing."""
# ruff: noqa: F811 - the fixtures are imported from test_llm and named as parameters

from __future__ import annotations

import asyncio

import pytest

import llm.pool
from core.config import OpenAIAccount
from llm.base import ChatTurn
from llm.openai_compat import OpenAICompatible
from llm.pool import Slots
from tests.fakes.openai_server import FakeOpenAI
from tests.test_llm import HELLO, Factory, backend, fake  # noqa: F401

PNG_DATA_URL = "data:image/png;base64,iVBORw0KGgo="


async def burst(model: OpenAICompatible, count: int) -> None:
    await asyncio.gather(*(model.complete([ChatTurn("user", f"hi {i}")]) for i in range(count)))


async def test_max_concurrency_caps_requests_in_flight_at_the_server(fake: FakeOpenAI, backend: Factory) -> None:
    fake.latency = 0.2
    model = backend(accounts=[{"name": "local", "api_key": "k1", "model": "m1", "max_concurrency": 2}])
    await burst(model, 6)
    assert len(fake.requests) == 6
    assert fake.peak_in_flight == 2


async def test_default_concurrency_lets_a_burst_through_at_once(fake: FakeOpenAI, backend: Factory) -> None:
    assert OpenAIAccount.model_validate({"api_key": "k"}).max_concurrency == 64
    fake.latency = 0.3
    model = backend()
    await burst(model, 30)
    assert fake.peak_in_flight == 30


async def test_429_halves_the_concurrency_for_a_while(
    fake: FakeOpenAI, backend: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm.pool, "THROTTLE_SECONDS", 1.0)
    fake.latency = 0.2
    model = backend(accounts=[{"name": "hosted", "api_key": "k1", "model": "m1", "max_concurrency": 4}])
    await burst(model, 8)
    assert fake.peak_in_flight == 4
    fake.fail_next(429, retry_after=0.01)
    await model.complete(HELLO)  # 429, a short wait, then answered on the same account
    fake.peak_in_flight = 0
    await burst(model, 8)
    assert fake.peak_in_flight == 2
    await asyncio.sleep(1.0)  # the halving is over: the whole concurrency again
    fake.peak_in_flight = 0
    await burst(model, 8)
    assert fake.peak_in_flight == 4


async def test_images_go_to_the_vision_account_not_round_robin(fake: FakeOpenAI, backend: Factory) -> None:
    model = backend(
        accounts=[
            {"name": "blind", "api_key": "k-blind", "model": "text"},
            {"name": "eyes", "api_key": "k-eyes", "model": "gpt-4o", "vision": True},
        ]
    )
    turns = [ChatTurn("user", "这是什么[图片]", images=(PNG_DATA_URL,))]
    replies = [await model.complete(turns) for _ in range(4)]
    assert [r.account for r in replies] == ["eyes"] * 4
    assert fake.authorizations() == ["k-eyes"] * 4
    assert all(isinstance(r["body"]["messages"][-1]["content"], list) for r in fake.requests)
    # text without images still takes turns
    texts = [(await model.complete(HELLO)).account for _ in range(2)]
    assert sorted(texts) == ["blind", "eyes"]


async def test_images_fall_back_to_another_account_when_the_vision_one_is_down(
    fake: FakeOpenAI, backend: Factory
) -> None:
    model = backend(
        accounts=[
            {"name": "eyes", "api_key": "k-eyes", "model": "gpt-4o", "vision": True},
            {"name": "blind", "api_key": "k-blind", "model": "text"},
        ],
        max_retries=0,
    )
    fake.fail_next(500)
    reply = await model.complete([ChatTurn("user", "看图", images=(PNG_DATA_URL,))])
    assert reply.account == "blind"
    assert fake.requests[-1]["body"]["messages"][-1]["content"] == "看图"


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs: `second` must get the slot
    await asyncio.wait_for(second, 1.0)
    assert slots.in_flight == 1
