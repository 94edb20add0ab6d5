"""`/metrics` (Prometheus) and the dashboard's figures after a scripted load, through real sockets."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BOT_QQ, VERIFY_KEY, mirai_url, start_bot
from tests.console_client import PASSWORD, ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

__all__ = ["console"]

TOKEN = "metrics-test-token"
PREFIX = "qq_chatgpt_bot_"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def chat(mirai: FakeMirai, texts: list[str]) -> list[str]:
    replies: list[str] = []
    for text in texts:
        seen = len(mirai.commands)
        await mirai.push(friend_message(20001, text, 500 + seen))
        replies += [sent_text(c) for c in (await mirai.wait_commands(seen + 1))[seen:]]
    return replies


async def test_metrics_after_a_scripted_load(console: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    client: ConsoleClient = await console({"web": {"metrics": True, "metrics_token": TOKEN}})
    app = client.app
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    try:
        replies = await chat(mirai, ["一", "二", "三"])
        assert replies == ["echo: 一", "echo: 二", "echo: 三"]
        fake_llm.fail_next(400, message="bad request")  # refused at once: a failed answer, no retry
        [failure] = await chat(mirai, ["四"])
        assert "原因" in failure
        async with aiohttp.ClientSession() as http:
            url = f"{client.base}/metrics"
            async with http.get(url) as response:
                assert response.status == 401
            async with http.get(url, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200 and response.content_type == "text/plain"
                text = await response.text()
    finally:
        await mirai.close()
    for secret in (TOKEN, PASSWORD, VERIFY_KEY, "sk-test-1"):
        assert secret not in text
    got = samples(text)
    assert got[(PREFIX + "messages_received_total", (("platform", "mirai"),))] == 4
    assert got[(PREFIX + "messages_sent_total", (("platform", "mirai"),))] == 4
    assert got[(PREFIX + "answers_total", (("outcome", "ok"),))] == 3
    assert got[(PREFIX + "answers_total", (("outcome", "bad_request"),))] == 1
    assert got[(PREFIX + "model_request_seconds_count", (("account", "main"),))] == 4
    assert got[(PREFIX + "model_errors_total", (("account", "main"), ("kind", "bad_request")))] == 1
    assert got[(PREFIX + "model_tokens_total", (("account", "main"), ("kind", "prompt")))] > 0
    [link] = [value for (name, labels), value in got.items() if name == PREFIX + "link_up"]
    assert link == 1
    assert got[(PREFIX + "queue_depth", ())] == 0
    assert got[(PREFIX + "database_write_seconds_count", ())] >= 3  # an exchange stored per answer

    # the dashboard shows the same load
    status, live = await client.get("/dashboard/live")
    assert status == 200
    row = re.search(r'<tr data-account="main">(.*?)</tr>', live, re.DOTALL)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.DOTALL)
    assert cells[-4:-2] == ["4", "1"]  # requests, failures
    assert cells[-2].endswith(" s") and cells[-1].endswith(" s")  # p50 and p95 of the successful ones
    assert re.search(r'id="failures">1<', live)
    chart = re.search(r'<script type="application/json" id="answers-data">(.*?)</script>', live, re.DOTALL)
    assert chart is not None
    hours, ok, failed = json.loads(html.unescape(chart.group(1)))
    assert len(hours) == len(ok) == len(failed) == 24 and (sum(ok), sum(failed)) == (3, 1)


async def test_metrics_are_off_unless_enabled(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    async with aiohttp.ClientSession() as http, http.get(f"{client.base}/metrics") as response:
        assert response.status == 404


async def test_metrics_without_a_token_are_open(write_config: Callable[..., Path]) -> None:
    app = await start_bot(write_config({"web": {"metrics": True, "console": False}}))
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.web.port}/metrics") as response:
            assert response.status == 200
            assert PREFIX + "queue_depth" in await response.text()
    finally:
        await app.stop()
