"""Hostile input and peer faults through Milky's real transports (WS, SSE, webhook) against a fake Milky."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.frames import MAX_BODY, MAX_FRAME
from adapters.link import LinkState, LinkStatus
from adapters.milky import transports
from tests.conftest import eventually, free_port, start_bot
from tests.fakes.milky_server import FakeMilky, sent_text
from tests.fakes.openai_server import FakeOpenAI
from tests.hostile import body_frames, fail_once, generic_frames, wrong_types

BOT = 10003
TOKEN = "milky-token-Zq8"
USER, MEMBER, STRANGER, GROUP = 20001, 20002, 20003, 30001
TRANSPORTS = ["ws", "sse", "webhook"]
POKE_REPLY = "别戳"
GARBAGE_TEXT = "坏消息"


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "data": {"text": value}}


def mention(user: int) -> dict[str, Any]:
    return {"type": "mention", "data": {"user_id": user, "name": "bot"}}


class Bot:
    """A bot on one Milky transport and the fake implementation it talks to."""

    def __init__(self, app: Any, impl: FakeMilky, transport: str) -> None:
        self.app = app
        self.impl = impl
        self.transport = transport
        self.seq = 5000

    @property
    def adapter(self) -> Any:
        return self.app.adapters["milky"]

    def states(self) -> list[LinkState]:
        return [status.state for status in self.adapter.links]

    def sends(self) -> list[dict[str, Any]]:
        return [c for c in self.impl.calls if c["api"].startswith("send_")]

    def answers(self) -> list[dict[str, Any]]:
        return [c for c in self.impl.calls if c["api"].startswith(("accept_", "reject_"))]

    async def answered(self, words: str) -> None:
        """A normal private message gets its answer."""
        self.seq += 1
        await self.impl.push(self.impl.message_event("friend", USER, USER, [text(words)], self.seq))
        await eventually(lambda: any(sent_text(c) == f"echo: {words}" for c in self.sends()), timeout=10)

    def assert_same_connection(self, connections: int) -> None:
        """No reconnect happened and every link is still healthy."""
        if self.transport == "webhook":
            assert self.states() == [LinkState.LISTENING, LinkState.UP]
        else:
            assert self.states() == [LinkState.UP]
            assert self.impl.connections == connections and self.impl.channels == [self.transport]


def reconnected(bot: Bot, before: int) -> bool:
    """The link dialled a new connection since `before` connections, and is up on it."""
    return bot.impl.connections > before and bot.adapter.connected


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transports, "RECONNECT_MIN_DELAY", 0.05)
    monkeypatch.setattr(transports, "RECONNECT_MAX_DELAY", 0.2)


@pytest.fixture
def transitions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, LinkState]]:
    """Every state change of every link, in order, as (link name, new state)."""
    seen: list[tuple[str, LinkState]] = []
    original = LinkStatus.set

    def record(self: LinkStatus, state: LinkState, reason: str = "") -> None:
        if state is not self.state:
            seen.append((self.name, state))
        original(self, state, reason)

    monkeypatch.setattr(LinkStatus, "set", record)
    return seen


@pytest.fixture
async def milky(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Bot] = []

    async def start(transport: str, token: str = TOKEN) -> Bot:
        impl = FakeMilky(BOT, access_token=TOKEN)
        url = await impl.start()
        section: dict[str, Any] = {"url": url, "access_token": token, "event_transport": transport}
        if transport == "webhook":
            port = free_port()
            section |= {"webhook_host": "127.0.0.1", "webhook_port": port}
            impl.webhook_url = f"http://127.0.0.1:{port}/hook"
        extra = {"response": {"poke_reply": POKE_REPLY}, "system": {"reply_temp": True}}
        app = await start_bot(write_config({"mirai": None, "milky": section, **extra}))
        bot = Bot(app, impl, transport)
        started.append(bot)
        if token == TOKEN:
            await eventually(lambda: bot.adapter.connected, timeout=10)
        return bot

    yield start
    for bot in started:
        await bot.app.stop()
        await bot.impl.stop()


def contents(fake_llm: FakeOpenAI) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in fake_llm.requests]


# --- the generic corpus ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_generic_frames_are_dropped_and_the_link_stays(milky: Any, transport: str, fake_llm: FakeOpenAI) -> None:
    bot = await milky(transport)
    frames = generic_frames(MAX_FRAME) if transport == "ws" else body_frames()
    normals: list[str] = []
    for name, frame in frames:
        connections = bot.impl.connections
        await bot.impl.push_raw(frame)
        if transport == "ws" and isinstance(frame, bytes):
            await bot.impl.push_raw(frame, binary=True)
        if transport == "ws" and name == "over the size cap":
            # aiohttp closes a WebSocket with 1009 on a frame over max_msg_size before the bot sees it:
            # the one frame that costs the connection. The link redials at once.
            await eventually(functools.partial(reconnected, bot, connections), timeout=10)
            connections = bot.impl.connections
        if transport == "webhook":
            status = bot.impl.webhook_statuses[-1]
            # 0: the fake was cut off while still sending a body the bot refused by its Content-Length.
            allowed = (0, 413) if name == "over the size cap" else (204, 400)
            assert status in allowed, (name, status)
        words = f"还在 {len(normals)}"
        await bot.answered(words)
        normals.append(words)
        bot.assert_same_connection(connections)
    assert contents(fake_llm) == normals


# --- wrong types in every field of every event kind -----------------------------------------------


def _kinds(impl: FakeMilky) -> dict[str, dict[str, Any]]:
    return {
        "private message": impl.message_event("friend", USER, USER, [text(GARBAGE_TEXT)], 501, nickname="Alice"),
        "group message": impl.message_event(
            "group", GROUP, MEMBER, [mention(BOT), text(GARBAGE_TEXT)], 502, role="admin", card="管理"
        ),
        "temp message": impl.message_event("temp", STRANGER, STRANGER, [text(GARBAGE_TEXT)], 503),
        "friend request": impl.friend_request(MEMBER, "加个好友", "搜索"),
        "group invitation": impl.group_invitation(GROUP, 77, MEMBER),
        "group nudge": impl.group_nudge(GROUP, MEMBER, BOT),
        "friend nudge": impl.friend_nudge(USER),
        "bot offline": {"time": 1, "self_id": BOT, "event_type": "bot_offline", "data": {"reason": "被挤下线"}},
    }


def _legitimate(kind: str) -> Callable[[dict[str, Any]], bool]:
    """What the bot may do with a variant of `kind`: only ever the same as with the original event."""
    if kind == "group nudge":
        return lambda c: c["api"] == "send_group_message" and c["params"]["group_id"] == GROUP
    if kind == "friend nudge":
        return lambda c: c["api"] == "send_private_message" and c["params"]["user_id"] == USER
    if kind == "friend request":
        return lambda c: c["params"] == {"initiator_uid": f"u_fake{MEMBER}", "is_filtered": False}
    if kind == "group invitation":
        return lambda c: c["params"] == {"group_id": GROUP, "invitation_seq": 77}
    return lambda c: False  # messages: every valid variant repeats the original's id, so it is a duplicate


def _cases() -> Iterator[Any]:
    for transport in TRANSPORTS:
        for kind in _kinds(FakeMilky(BOT)):
            yield pytest.param(transport, kind, id=f"{transport}-{kind}")


@pytest.mark.parametrize(("transport", "kind"), list(_cases()))
async def test_wrong_types_in_every_field_reach_nothing(
    milky: Any, transport: str, kind: str, fake_llm: FakeOpenAI
) -> None:
    bot = await milky(transport)
    impl = bot.impl
    event = _kinds(impl)[kind]
    # The original first: it is handled (so the variants test a path that works) and, for messages,
    # answered once; every variant that still decodes is then that same message again.
    await impl.push(event)
    if kind.endswith("message"):
        await eventually(lambda: any(sent_text(c) == f"echo: {GARBAGE_TEXT}" for c in bot.sends()), timeout=10)
    elif kind.endswith("nudge"):
        await eventually(lambda: any(sent_text(c) == POKE_REPLY for c in bot.sends()), timeout=10)
    elif kind != "bot offline":
        await eventually(lambda: bot.answers(), timeout=10)
    requests, calls, connections = len(fake_llm.requests), len(impl.calls), impl.connections
    for _, variant in wrong_types(event):
        await impl.push_raw(json.dumps(variant))
    await bot.answered("正常")
    bot.assert_same_connection(connections)
    assert contents(fake_llm)[requests:] == ["正常"]
    legitimate = _legitimate(kind)
    during = [c for c in impl.calls[calls:] if sent_text(c) != "echo: 正常"]
    assert all(legitimate(c) for c in during), [c for c in during if not legitimate(c)][:3]
    if transport == "webhook":
        assert all(status in (204, 400) for status in impl.webhook_statuses)


# --- a bug in one handler ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_handler_bug_costs_one_event_not_the_link(
    milky: Any, transport: str, fake_llm: FakeOpenAI, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await milky(transport)
    adapter = bot.adapter
    fail_once(monkeypatch, adapter, "on_event")
    connections = bot.impl.connections
    await bot.impl.push(bot.impl.message_event("friend", USER, USER, [text("触发故障")], 900))
    await eventually(lambda: any("could not be handled" in line for line in log_lines), timeout=10)
    await bot.answered("故障之后")
    bot.assert_same_connection(connections)
    assert contents(fake_llm) == ["故障之后"]
    assert any("event_type=message_receive" in line for line in log_lines if "could not be handled" in line)


# --- peer faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_peer_drops_then_answers_garbage_and_the_link_comes_back(
    milky: Any, transport: str, transitions: list[tuple[str, LinkState]]
) -> None:
    bot = await milky(transport)
    name = bot.adapter.links[0].name
    transitions.clear()
    # An error page, then a 200 that is neither a WebSocket nor an event stream, then the real thing.
    bot.impl.event_failures = [500, 200]
    await bot.impl.drop()
    await eventually(lambda: bot.impl.channels == [transport] and bot.adapter.connected, timeout=10)
    states = [state for link, state in transitions if link == name]
    assert states[0] is LinkState.DOWN and states[-1] is LinkState.UP
    assert states.count(LinkState.DOWN) == 3 and LinkState.STOPPED not in states
    await bot.answered("恢复了")


async def test_webhook_api_outage_queues_the_reply_until_it_is_back(
    milky: Any, transitions: list[tuple[str, LinkState]]
) -> None:
    bot = await milky("webhook")
    api_link = bot.adapter.links[1].name
    transitions.clear()
    event = bot.impl.message_event("friend", USER, USER, [text("断线时")], 700)
    await bot.impl.stop()  # the implementation goes away, and its API with it
    await bot.impl.push(event)  # an event still arrives
    assert bot.impl.webhook_statuses[-1] == 204
    await eventually(lambda: (api_link, LinkState.DOWN) in transitions, timeout=10)
    assert bot.adapter.links[0].state is LinkState.LISTENING
    await bot.impl.start()  # back on the same port
    await eventually(lambda: any(sent_text(c) == "echo: 断线时" for c in bot.sends()), timeout=10)
    assert bot.states() == [LinkState.LISTENING, LinkState.UP]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_token_stops_the_platform_with_one_line(
    milky: Any, transport: str, log_lines: list[str]
) -> None:
    secret = "wrong-token-Xy7"
    bot = await milky(transport, token=secret)
    await asyncio.wait_for(bot.app.all_stopped.wait(), timeout=10)
    assert all(status.state is LinkState.STOPPED for status in bot.adapter.links)
    assert "[milky] access_token" in bot.app.stopped_reason
    assert not bot.adapter.connected
    stopped = [line for line in log_lines if "stopped:" in line]
    assert len(stopped) == 1 and "[milky] access_token" in stopped[0]
    assert not any(secret in line or TOKEN in line for line in log_lines)


# --- the webhook listener against hostile requests -------------------------------------------------


async def _raw_request(port: int, headers: list[bytes], body: bytes = b"", length: int | None = None) -> int:
    """One POST written byte for byte (headers may hold any byte); the status the bot answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [b"POST /hook HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    head.append(b"Content-Length: %d" % (len(body) if length is None else length))
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return int(status_line.split()[1])


async def _chunked_request(port: int, headers: list[bytes], size: int) -> int:
    """A chunked POST of `size` bytes that never says its length up front."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [b"POST /hook HTTP/1.1", b"Host: 127.0.0.1", b"Transfer-Encoding: chunked", *headers]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n")

    async def send() -> None:
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(chunk) + 1):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    sender = asyncio.create_task(send())
    status_line = await asyncio.wait_for(reader.readline(), 10)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    writer.close()
    return int(status_line.split()[1])


async def test_webhook_answers_hostile_requests_with_4xx_and_keeps_working(milky: Any, fake_llm: FakeOpenAI) -> None:
    bot = await milky("webhook")
    port = bot.adapter.port
    auth = b"Authorization: Bearer " + TOKEN.encode()
    event = json.dumps(bot.impl.message_event("friend", USER, USER, [text("伪造")], 800)).encode()
    refused = [
        [b"Authorization: Bearer \xff\xfe" + TOKEN.encode()],
        [b"Authorization: \xff"],
        [b"Authorization: Bearer " + TOKEN.encode() + b"\xff"],
        [],
    ]
    for headers in refused:
        assert await _raw_request(port, headers, event) == 401, headers
    assert fake_llm.requests == []
    # Authenticated, with 0xFF bytes in other headers: still handled.
    odd_headers = [auth, b"X-Trace: \xff\xfe", b"Content-Type: application/json; charset=\xff"]
    assert await _raw_request(port, odd_headers, event) == 204
    assert await _raw_request(port, [auth, b"X-Trace: \x00"], event) == 400  # aiohttp's parser refuses NUL
    await eventually(lambda: contents(fake_llm) == ["伪造"], timeout=10)
    bad_bodies = {
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "invalid UTF-8": b'{"event_type":"message_receive","data":{"x":"\xff\xfe"}}',
        "not JSON": b"<html>",
        "empty": b"",
        "not an object": b"[1,2]",
    }
    for name, body in bad_bodies.items():
        assert await _raw_request(port, [auth], body) == 400, name
    assert await _raw_request(port, [auth], b"{}", length=MAX_BODY + 1) == 413
    assert await _chunked_request(port, [auth], MAX_BODY + 65536) == 413
    await bot.answered("之后")
    assert bot.states() == [LinkState.LISTENING, LinkState.UP]
    assert contents(fake_llm) == ["伪造", "之后"]
