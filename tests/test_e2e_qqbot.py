"""Official QQ bot end to end: fake QQ open platform (token, gateway, REST, webhook) ⇄ bot ⇄ fake OpenAI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.link import LinkState
from adapters.qqbot import adapter as qqbot_adapter
from tests.conftest import eventually, free_port, start_bot
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.qq_official import FakeQQ

APPID = "102000001"
SECRET = "qq-bot-secret-for-tests"


class QQ:
    def __init__(self, app: Any, platform: FakeQQ, config: Path) -> None:
        self.app = app
        self.platform = platform
        self.config = config  # the bot's config file, to start it again

    @property
    def adapter(self) -> Any:
        return self.app.adapters["qqbot"]

    async def replies(self, count: int) -> list[dict[str, Any]]:
        return await self.platform.wait_messages(count, timeout=10)


@pytest.fixture(name="qq")
async def qq_fixture(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Any]]:
    monkeypatch.setattr(qqbot_adapter, "SHARD_STAGGER", 0.2)
    monkeypatch.setattr(qqbot_adapter, "RECONNECT_DELAYS", (0.05, 0.5))  # reconnects in tests take milliseconds
    started: list[QQ] = []

    async def start(
        extra: dict[str, Any] | None = None,
        shards: int = 1,
        token_ttl: int = 7200,
        wait: bool = True,
        platform: FakeQQ | None = None,
        **section: Any,
    ) -> QQ:
        if platform is None:
            platform = FakeQQ(APPID, SECRET, shards=shards, token_ttl=token_ttl)
            platform.heartbeat_interval_ms = 300
            await platform.start()
        base = platform.base_url
        settings: dict[str, Any] = {"appid": APPID, "secret": SECRET, "api_base": base}
        settings["token_url"] = f"{base}/app/getAppAccessToken"
        settings |= {"shards": shards, **section}
        config = write_config({"mirai": None, "qqbot": settings, **(extra or {})})
        started.append(QQ(await start_bot(config), platform, config))
        if wait and settings.get("mode") != "webhook":
            await platform.wait_ready(shards, timeout=10)
        return started[-1]

    yield start
    for q in started:
        await q.app.stop()
        await q.platform.stop()


async def test_group_and_c2c_round_trips_with_passive_replies(qq: Any, fake_llm: FakeOpenAI) -> None:
    q = await qq()
    group_msg = await q.platform.push_group_at("G1", "M1", " 你好")
    [group] = await q.replies(1)
    assert group["scope"] == "group" and group["target"] == "G1"
    assert group["body"]["msg_id"] == group_msg and group["body"]["msg_seq"] == 1
    assert group["body"]["content"] == "echo: 你好"  # the leading space of the @ is gone
    c2c_msg = await q.platform.push_c2c("U1", "私聊")
    _, c2c = await q.replies(2)
    assert (c2c["scope"], c2c["target"], c2c["body"]["msg_id"]) == ("user", "U1", c2c_msg)
    assert q.platform.identifies[0]["intents"] == 1 << 25 and q.platform.identifies[0]["shard"] == [0, 1]
    # openids are a separate id space: sessions are keyed by them, not shared with QQ numbers
    assert fake_llm.requests[-1]["body"]["messages"][-1]["content"] == "私聊"


async def test_redelivered_message_answered_once(qq: Any, fake_llm: FakeOpenAI) -> None:
    q = await qq()
    msg = await q.platform.push_c2c("U1", "一次")
    await q.replies(1)
    await q.platform.redeliver(msg)
    await q.platform.push_c2c("U1", "下一条")  # events of one shard are handled in order
    replies = await q.replies(2)
    assert [r["body"]["content"] for r in replies] == ["echo: 一次", "echo: 下一条"]
    assert len(fake_llm.requests) == 2 and not q.platform.rejected


async def test_resume_after_4009_loses_no_event(qq: Any) -> None:
    q = await qq()
    await q.platform.push_c2c("U1", "第一条")
    await q.replies(1)
    await q.platform.close_socket(4009)
    await q.platform.push_c2c("U2", "断线期间")  # logged for the session, replayed on resume
    await q.platform.wait_ready(2, timeout=10)
    replies = await q.replies(2)
    assert replies[1]["target"] == "U2" and replies[1]["body"]["content"] == "echo: 断线期间"
    assert q.platform.resumes and q.platform.resumes[0]["seq"] >= 1


async def test_identify_again_after_4006_and_op_9(qq: Any) -> None:
    q = await qq()
    await q.platform.close_socket(4006)
    await q.platform.wait_ready(2, timeout=10)
    await q.platform.send_op(9)
    await q.platform.wait_ready(3, timeout=10)
    assert len(q.platform.identifies) == 3 and not q.platform.resumes
    await q.platform.push_c2c("U1", "还在")
    [reply] = await q.replies(1)
    assert reply["body"]["content"] == "echo: 还在"


async def test_fatal_close_code_stops_with_a_clear_line(qq: Any, log_lines: list[str]) -> None:
    q = await qq()
    await q.platform.close_socket(4915)
    await asyncio.wait_for(q.app.all_stopped.wait(), 10)  # the only platform stopped for good: the process exits
    [status] = q.adapter.links
    assert status.state is LinkState.STOPPED and "4915" in status.reason and "banned" in status.reason
    assert any("4915" in line and "not reconnecting" in line for line in log_lines)
    assert len(q.platform.identifies) == 1 and q.platform.connections == 1


async def test_two_shards_identify_one_after_another(qq: Any) -> None:
    q = await qq(shards=2)
    assert sorted(tuple(i["shard"]) for i in q.platform.identifies) == [(0, 2), (1, 2)]
    await q.platform.push_c2c("U1", "分片1", shard=1)
    [reply] = await q.replies(1)
    assert reply["body"]["content"] == "echo: 分片1"


async def test_token_is_refreshed_before_it_expires(qq: Any) -> None:
    q = await qq(token_ttl=60)  # a minute or less left at once: every use asks again
    await q.platform.push_c2c("U1", "一")
    await q.replies(1)
    await q.platform.push_c2c("U1", "二")
    await q.replies(2)
    assert len(q.platform.tokens_issued) >= 2
    assert all(r["authorized"] for r in q.platform.requests)


async def test_heartbeats_and_missing_ack_reconnects(qq: Any, log_lines: list[str]) -> None:
    q = await qq()
    await q.platform.wait_heartbeats(2, timeout=10)
    q.platform.ack_heartbeats = False
    await eventually(lambda: any("no heartbeat ACK" in line for line in log_lines), timeout=10)
    q.platform.ack_heartbeats = True
    await q.platform.wait_ready(2, timeout=10)


async def test_long_answer_fits_in_five_replies_and_urls_are_unlinkable(qq: Any, fake_llm: FakeOpenAI) -> None:
    q = await qq({"response": {"buffer_delay": 0}})
    fake_llm.reply_fn = lambda body: "\n\n".join(
        f"第{i}段，详见 https://example.com/a.html 。" + "字" * 1990 for i in range(8)
    )
    await q.platform.push_c2c("U1", "写很长的回答")
    await eventually(lambda: len(q.platform.messages) + len(q.platform.rejected) >= 5, timeout=10)
    await asyncio.sleep(0.3)
    assert not q.platform.rejected, q.platform.rejected
    assert [m["body"]["msg_seq"] for m in q.platform.messages] == [1, 2, 3, 4, 5]
    assert "example。com" in q.platform.messages[0]["body"]["content"]


async def test_drawing_uploads_the_picture_by_url(qq: Any, fake_llm: FakeOpenAI) -> None:
    account = {"name": "p", "api_key": "sk-a", "api_endpoint": fake_llm.base_url, "image_model": "dall-e-3"}
    fake_llm.image_format = "url"
    q = await qq({"openai": {"accounts": [account]}})
    await q.platform.push_group_at("G1", "M1", " 画 一只猫")
    [reply] = await q.replies(1)
    assert reply["body"]["msg_type"] == 7 and reply["body"]["media"]["file_info"].startswith("fi-")
    assert q.platform.uploads[0]["ok"] and q.platform.uploads[0]["size"] > 0


async def test_webhook_signatures_and_validation(qq: Any, fake_llm: FakeOpenAI) -> None:
    port = free_port()
    q = await qq(mode="webhook", webhook_host="127.0.0.1", webhook_port=port, webhook_path="/qqbot")
    url = f"http://127.0.0.1:{port}/qqbot"
    validation = await q.platform.validate_webhook(url)
    assert validation["ok"], validation
    event = q.platform.c2c_event("U9", "回调来的")
    status, _ = await q.platform.send_webhook(url, event, bad_signature=True)
    assert status == 401
    status, _ = await q.platform.send_webhook(url, event, sign=False)
    assert status == 401
    status, body = await q.platform.send_webhook(url, event)
    assert status == 200 and '"op": 12' in body.replace('"op":12', '"op": 12')
    [reply] = await q.replies(1)
    assert reply["target"] == "U9" and reply["body"]["content"] == "echo: 回调来的"
    assert len(fake_llm.requests) == 1


async def test_rendered_answer_goes_through_the_resource_server(qq: Any, fake_llm: FakeOpenAI) -> None:
    port = free_port()
    resource = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    q = await qq({"response": {"mode": "image"}}, resource=resource)
    await q.platform.push_c2c("U1", "请发成图片")
    [reply] = await q.replies(1)
    assert reply["body"]["msg_type"] == 7
    [upload] = q.platform.uploads
    assert upload["ok"] and upload["url"].startswith(f"http://127.0.0.1:{port}/qqbot-files/")
    assert upload["size"] > 1000  # the fake fetched the rendered PNG from the bot


async def test_custom_uploader_is_used(
    qq: Any, fake_llm: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.image_server import FakeImageServer

    images = FakeImageServer()
    base = await images.start()
    module = tmp_path / "my_uploader.py"
    module.write_text(f"async def upload(data):\n    return '{base}/cat.png'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        q = await qq({"response": {"mode": "image"}}, uploader="my_uploader:upload")
        await q.platform.push_c2c("U1", "图片")
        [reply] = await q.replies(1)
        assert reply["body"]["msg_type"] == 7 and q.platform.uploads[0]["url"] == f"{base}/cat.png"
    finally:
        await images.stop()
