"""Both Mirai modes end to end — reverse-ws (mirai dials the bot) and forward ws + http (the bot dials
mirai) — must look the same to the conversation layer; plus what only the forward mode has to survive."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import adapters.mirai.forward
from adapters.link import LinkState
from bot import App
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, free_port, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, group_message, sent_text
from tests.fakes.mirai_server import FakeMiraiServer
from tests.fakes.openai_server import FakeOpenAI

SAMPLES = Path(__file__).parent / "samples" / "mirai"


class Link:
    """One bot and the fake mirai-api-http it talks to, in either mode (same push/commands API)."""

    def __init__(self, app: App, mirai: FakeMirai | FakeMiraiServer) -> None:
        self.app = app
        self.mirai = mirai

    async def say(self, event: dict[str, Any], replies: int = 1) -> list[dict[str, Any]]:
        seen = len(self.mirai.commands)
        await self.mirai.push(event)
        return (await self.mirai.wait_commands(seen + replies))[seen:]


@pytest.fixture
async def connect(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    links: list[Link] = []
    servers: list[FakeMiraiServer] = []

    async def start(mode: str, extra: dict[str, Any] | None = None) -> Link:
        extra = dict(extra or {})
        if mode == "forward":
            server = FakeMiraiServer(VERIFY_KEY, BOT_QQ)
            await server.start()
            servers.append(server)
            mirai_section = {"reverse_ws_port": None, "ws_url": server.base_url, "http_url": server.base_url}
            config = write_config({**extra, "mirai": {**extra.get("mirai", {}), **mirai_section}})
            # a `None` port means "not set": drop the key the writer emitted for reverse mode
            text = "\n".join(
                line for line in config.read_text(encoding="utf-8").splitlines() if "reverse_ws" not in line
            )
            config.write_text(text, encoding="utf-8")
            app = await start_bot(config)
            await server.wait_connected()
            await eventually(lambda: app.adapters["mirai"].connected)
            links.append(Link(app, server))
        else:
            app = await start_bot(write_config(extra))
            peer = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
            await peer.connect()
            links.append(Link(app, peer))
        return links[-1]

    yield start
    for link in links:
        if isinstance(link.mirai, FakeMirai):
            await link.mirai.close()
        await link.app.stop()
    for server in servers:
        await server.stop()


MODES = pytest.mark.parametrize("mode", ["reverse", "forward"])


def forward_to(url: str) -> dict[str, Any]:
    """The `[mirai]` keys for forward mode: no reverse port, both URLs as v2 configs write them."""
    return {"reverse_ws_port": None, "reverse_ws_host": None, "ws_url": url, "http_url": url}


@MODES
async def test_round_trips_private_and_group_with_quote(connect: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    link = await connect(mode)
    [private] = await link.say(friend_message(20001, "你好", 1))
    assert (private["command"], private["content"]["target"], sent_text(private)) == (
        "sendFriendMessage",
        20001,
        "echo: 你好",
    )
    [group] = await link.say(group_message(30001, 20002, "群里好", 2, at=BOT_QQ))
    assert group["command"] == "sendGroupMessage" and group["content"]["quote"] == 2
    assert sent_text(group) == "echo: 群里好"


@MODES
async def test_every_element_sample_reaches_the_model_as_text(connect: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    link = await connect(mode)
    chain = [case["wire"] for case in json.loads((SAMPLES / "elements.json").read_text(encoding="utf-8"))]
    event = {
        "type": "FriendMessage",
        "sender": {"id": 20001, "nickname": "n"},
        "messageChain": [*chain, {"type": "Plain", "text": "？"}],
    }
    [reply] = await link.say(event)
    prompt = fake_llm.requests[-1]["body"]["messages"][-1]["content"]
    assert prompt.endswith("？") and "[图片]" in prompt and "[语音]" in prompt and "[聊天记录]" in prompt
    assert sent_text(reply).startswith("echo: ")


@MODES
async def test_sync_messages_ignored_and_requests_per_config(connect: Any, mode: str, fake_llm: FakeOpenAI) -> None:
    link = await connect(mode, {"system": {"accept_friend_request": False, "accept_group_invite": True}})
    events = json.loads((SAMPLES / "events.json").read_text(encoding="utf-8"))
    for name in ("FriendSyncMessage", "GroupSyncMessage"):
        await link.mirai.push(events[name]["data"])
    await link.mirai.push(
        {"type": "NewFriendRequestEvent", "eventId": 1, "fromId": 20009, "groupId": 0, "nick": "x", "message": ""}
    )
    await link.mirai.push({"type": "BotInvitedJoinGroupRequestEvent", "eventId": 2, "fromId": 20009, "groupId": 30009})
    commands = await link.mirai.wait_commands(2)
    await asyncio.sleep(0.2)
    answers = {c["command"]: c["content"]["operate"] for c in link.mirai.commands}
    assert answers == {"resp_newFriendRequestEvent": 1, "resp_botInvitedJoinGroupRequestEvent": 0}
    assert len(commands) == 2 and fake_llm.requests == []


@MODES
async def test_poke_at_the_bot_gets_the_configured_reply(connect: Any, mode: str) -> None:
    link = await connect(mode, {"response": {"poke_reply": "别戳我啦"}})
    poke = {
        "type": "NudgeEvent",
        "fromId": 20001,
        "subject": {"id": 30001, "kind": "Group"},
        "action": "戳了戳",
        "suffix": "",
    }
    await link.mirai.push({**poke, "target": 55555})  # someone else was poked: no reply
    [reply] = await link.say({**poke, "target": BOT_QQ})
    assert reply["command"] == "sendGroupMessage" and sent_text(reply) == "别戳我啦"


@MODES
async def test_swallowed_message_is_resent_as_forward_then_picture(
    connect: Any, mode: str, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    link = await connect(mode)
    server = link.mirai
    server.swallow_next = 1
    first, second = await link.say(friend_message(20001, "会被吞", 1), replies=2)
    assert sent_text(first) == "echo: 会被吞"
    assert second["content"]["messageChain"][0]["type"] == "Forward"
    server.swallow_next = 2
    commands = await link.say(friend_message(20001, "又被吞", 2), replies=3)
    assert [c["content"]["messageChain"][0]["type"] for c in commands] == ["Plain", "Forward", "Image"]
    assert any("swallowed" in line for line in log_lines)


async def test_forward_mode_waits_for_mirai_started_after_the_bot(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config({"mirai": forward_to(url)})
    started = time.monotonic()
    app = await start_bot(config)
    assert time.monotonic() - started < 1.0  # start-up does not wait for mirai
    server = FakeMiraiServer(VERIFY_KEY, BOT_QQ, port=port)
    try:
        await asyncio.sleep(1.5)
        assert any("mirai-api-http at" in line and "down" in line for line in log_lines)
        await server.start()
        await server.wait_connected(timeout=10)
        await eventually(lambda: app.adapters["mirai"].connected)
        await server.push(friend_message(20001, "终于连上", 1))
        [reply] = await server.wait_commands(1)
        assert sent_text(reply) == "echo: 终于连上"
    finally:
        await app.stop()
        await server.stop()


async def test_mirai_killed_and_restarted_mid_answer_loses_no_reply(connect: Any, fake_llm: FakeOpenAI) -> None:
    link = await connect("forward")
    server: FakeMiraiServer = link.mirai  # type: ignore[assignment]
    fake_llm.latency = 1.0
    await server.push(friend_message(20001, "慢慢想", 1))
    await asyncio.sleep(0.2)
    await server.stop()  # mirai dies while the model is thinking
    await asyncio.sleep(1.2)  # the answer is ready while nobody is connected
    await server.start()
    await server.wait_connected(timeout=10)
    [reply] = await server.wait_commands(1, timeout=10)
    assert sent_text(reply) == "echo: 慢慢想"


async def test_forward_wrong_verify_key_stops_the_link_for_good(
    write_config: Callable[..., Path], log_lines: list[str]
) -> None:
    # A refused verifyKey cannot fix itself: the link stops with one line naming the key to change,
    # and as the only platform its stop ends the process (exit 1) instead of retrying forever.
    server = FakeMiraiServer("the-real-key", BOT_QQ)
    await server.start()
    config = write_config({"mirai": forward_to(server.base_url)})
    app = await start_bot(config)
    try:
        await asyncio.wait_for(app.all_stopped.wait(), 10)
        adapter = app.adapters["mirai"]
        [status] = adapter.status().links
        assert status.state is LinkState.STOPPED and "[mirai] api_key" in status.reason
        stopped = [line for line in log_lines if "stopped: verifyKey mismatch" in line]
        assert len(stopped) == 1 and "[mirai] api_key" in stopped[0]
        assert server.refused == 1 and not adapter.connected
        assert "[mirai] api_key" in app.stopped_reason
        assert not any("the-real-key" in line or VERIFY_KEY in line for line in log_lines)
    finally:
        await app.stop()
        await server.stop()


async def test_forward_bot_not_logged_in_is_retried(write_config: Callable[..., Path], log_lines: list[str]) -> None:
    # Code 2 (the bot account is not logged in to mirai yet) can fix itself: retried, not fatal.
    server = FakeMiraiServer(VERIFY_KEY, 99999)
    await server.start()
    app = await start_bot(write_config({"mirai": forward_to(server.base_url)}))
    try:
        link = app.adapters["mirai"].link  # type: ignore[attr-defined]
        link.sleep = lambda delay: asyncio.sleep(0.01)
        await eventually(lambda: server.refused >= 3)
        assert any("bot qq not logged in" in line and str(BOT_QQ) in line for line in log_lines)
        assert link.status.state is not LinkState.STOPPED and not app.all_stopped.is_set()
        server.qq = BOT_QQ  # the account logs in
        await eventually(lambda: app.adapters["mirai"].connected)
        assert link.status.state is LinkState.UP
    finally:
        await app.stop()
        await server.stop()


async def test_forward_mode_uploads_big_pictures_over_http(
    connect: Any, fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapters.mirai.forward, "UPLOAD_OVER", 10)
    link = await connect("forward", {"response": {"mode": "image"}})
    server: FakeMiraiServer = link.mirai  # type: ignore[assignment]
    [reply] = await link.say(friend_message(20001, "渲染", 1))
    [element] = reply["content"]["messageChain"]
    assert element["type"] == "Image" and element["imageId"].endswith(".mirai")
    assert server.uploads and server.uploads[0]["type"] == "friend" and server.uploads[0]["size"] > 100
