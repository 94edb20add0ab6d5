"""Hostile input and peer faults through both Mirai transports: the reverse-ws listener and the forward ws link."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.link import LinkState, LinkStatus
from bot import App
from core.event import Event, MessageEvent, NoticeEvent, RequestEvent
from core.message import describe
from tests.conftest import VERIFY_KEY, eventually, free_port, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.mirai_server import FakeMiraiServer
from tests.fakes.openai_server import FakeOpenAI
from tests.hostile import WS_UPGRADE, fail_once, generic_frames, raw_request, wrong_types

BOT = 2976543210  # the account the recorded samples in tests/samples/mirai were made with
TOKEN = "reverse-token-3c1d"
EVENTS: dict[str, Any] = json.loads((Path(__file__).parent / "samples" / "mirai" / "events.json").read_text("utf-8"))
# A public payload of a kind the adapter ignores, verbatim from project-mirai/mirai-api-http
# docs/api/EventType.md (commit 01fd99d8910a58804b76a565835352c14478e296): its variants must stay ignored.
EVENTS["GroupRecallEvent"] = {
    "syncId": "-1",
    "data": {
        "type": "GroupRecallEvent",
        "authorId": 123456,
        "messageId": 123456789,
        "time": 1234679,
        "group": {"id": 123456789, "name": "Miral Technology", "permission": "ADMINISTRATOR"},
        "operator": {
            "id": 123456789,
            "memberName": "我是管理员",
            "permission": "ADMINISTRATOR",
            "specialTitle": "群头衔",
            "joinTimestamp": 12345678,
            "lastSpeakTimestamp": 8765432,
            "muteTimeRemaining": 0,
            "group": {"id": 123456789, "name": "Miral Technology", "permission": "MEMBER"},
        },
    },
}
MESSAGE_KINDS = ("FriendMessage", "GroupMessage", "TempMessage")
QUIET_KINDS = ("BotOnlineEvent", "GroupRecallEvent")  # logged or ignored: no reaction
# A real event of every kind the adapter handles: messages, a poke, requests, the account's state.
KINDS = (*MESSAGE_KINDS, "NudgeEvent", "NewFriendRequestEvent", "BotInvitedJoinGroupRequestEvent", *QUIET_KINDS)
PROBE = "探针"
MODES = pytest.mark.parametrize("mode", ["reverse", "forward"])


class Rig:
    """A bot on one Mirai transport, the fake mirai-api-http it talks to, and what reached the conversation layer."""

    def __init__(self, app: App, mode: str, peer: FakeMirai | FakeMiraiServer) -> None:
        self.app = app
        self.mode = mode
        self.peer = peer
        self.adapter: Any = cast(Any, app.adapters["mirai"])  # the transport's own attributes are read too
        self.events: list[Event] = []
        self.probes = 0
        handle = self.adapter.sink

        async def recording(event: Event) -> None:
            self.events.append(event)
            await handle(event)

        self.adapter.sink = recording
        if mode == "forward":
            self.adapter.link.sleep = self._quick_sleep
        self.down_seen: list[LinkState] = []

    async def _quick_sleep(self, delay: float) -> None:
        # The link sleeps only between attempts: record the state it waits in, and wait briefly.
        self.down_seen.append(self.status.state)
        await asyncio.sleep(0.02)

    @property
    def status(self) -> LinkStatus:
        status: LinkStatus = self.adapter.listener if self.mode == "reverse" else self.adapter.link.status
        return status

    @property
    def commands(self) -> list[dict[str, Any]]:
        return self.peer.commands

    def connection(self) -> tuple[Any, ...]:
        """What changes when the connection does: the peer's socket count (and socket), the status's since."""
        socket = id(self.peer.socket) if isinstance(self.peer, FakeMirai) else None
        return self.peer.connections, socket, self.status.state, self.status.since

    async def probe(self, like: dict[str, Any] | None = None) -> None:
        """A fresh message, in the same chat as the message event `like` when given, that must be answered."""
        self.probes += 1
        text = f"{PROBE} {self.probes}"
        event = friend_message(20001, text, 900_000 + self.probes)
        if like is not None:
            event = copy.deepcopy(like)
            chain: list[dict[str, Any]] = [{"type": "Source", "id": 900_000 + self.probes, "time": 1700000100}]
            if like["type"] == "GroupMessage":
                chain.append({"type": "At", "target": BOT, "display": "@bot"})
            event["messageChain"] = [*chain, {"type": "Plain", "text": text}]
        seen = len(self.commands)
        await self.peer.push(event)
        await eventually(lambda: any(sent_text(c) == f"echo: {text}" for c in self.commands[seen:]), timeout=10)


@pytest.fixture
async def rig(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Rig] = []

    async def start(mode: str, extra: dict[str, Any] | None = None) -> Rig:
        base: dict[str, Any] = {
            "system": {"accept_friend_request": True, "accept_group_invite": True, "reply_temp": True},
            # variants that are new messages queue up behind each other: no queue limit, no "queued" notices
            "response": {"poke_reply": "别戳啦", "max_queue_size": 0, "queued_notice_size": 0},
        }
        base.update(extra or {})
        if mode == "forward":
            server = FakeMiraiServer(VERIFY_KEY, BOT)
            await server.start()
            mirai = {"qq": BOT, "reverse_ws_port": None, "ws_url": server.base_url, "http_url": server.base_url}
            app = await start_bot(write_config({**base, "mirai": mirai}))
            started.append(Rig(app, mode, server))
            await eventually(lambda: app.adapters["mirai"].connected)
        else:
            port = free_port()
            mirai = {"qq": BOT, "reverse_ws_port": port, "reverse_ws_token": TOKEN}
            app = await start_bot(write_config({**base, "mirai": mirai}))
            peer = FakeMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT, {"Authorization": f"Bearer {TOKEN}"})
            started.append(Rig(app, mode, peer))
            await peer.connect()
            await eventually(lambda: app.adapters["mirai"].connected)
        return started[-1]

    yield start
    for started_rig in started:
        await started_rig.app.stop()
        if isinstance(started_rig.peer, FakeMirai):
            await started_rig.peer.close()
        else:
            await started_rig.peer.stop()


def model_texts(fake_llm: FakeOpenAI, since: int) -> list[str]:
    """The user text of each model request after the first `since`, probes left out."""
    texts = [str(r["body"]["messages"][-1]["content"]) for r in fake_llm.requests[since:]]
    return [text for text in texts if PROBE not in text]


def chat_commands(rig: Rig, since: int) -> list[str]:
    """Commands sent to mirai after the first `since`, probe replies left out, the quote (the message id) ignored."""
    out = []
    for command in rig.commands[since:]:
        if sent_text(command).startswith(f"echo: {PROBE}"):
            continue
        content = {key: value for key, value in command["content"].items() if key != "quote"}
        out.append(json.dumps([command["command"], content], sort_keys=True, ensure_ascii=False))
    return out


def identities(rig: Rig, since: int) -> list[tuple[Any, ...]]:
    """Who and where each event handed to the conversation layer is about (probes left out)."""
    out: list[tuple[Any, ...]] = []
    for event in rig.events[since:]:
        if isinstance(event, MessageEvent):
            if PROBE in describe(event.message):
                continue
            out.append(("message", event.chat_type, event.user_id, event.group_id))
        elif isinstance(event, NoticeEvent):
            out.append(("notice", event.kind, event.user_id, event.group_id, event.target_id))
        elif isinstance(event, RequestEvent):
            raw = event.raw
            out.append(("request", event.kind, event.user_id, event.group_id, raw.get("eventId"), raw.get("fromId")))
    return out


@MODES
async def test_generic_frames_keep_the_same_connection(
    rig: Callable[..., Any], mode: str, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    r: Rig = await rig(mode)
    before = r.connection()
    asked, sent = len(fake_llm.requests), len(r.commands)
    for name, frame in generic_frames(r.adapter.max_frame):
        if name == "over the size cap":
            continue  # closes the socket (1009): see test_frame_over_the_cap_closes_and_the_link_comes_back
        await r.peer.send_raw(frame)
        await r.probe()
        assert r.connection() == before, name
    assert model_texts(fake_llm, asked) == [] and chat_commands(r, sent) == []
    assert any("dropped a frame nested more than" in line for line in log_lines)
    assert any("malformed frame" in line for line in log_lines)


@MODES
async def test_frame_over_the_cap_closes_and_the_link_comes_back(rig: Callable[..., Any], mode: str) -> None:
    r: Rig = await rig(mode)
    before = r.connection()
    # Exactly at the cap is still a frame: it is parsed (and dropped as an unknown event), the socket stays.
    pad = r.adapter.max_frame - len('{"syncId":"-1","data":{"type":"Pad","pad":""}}')
    await r.peer.send_raw('{"syncId":"-1","data":{"type":"Pad","pad":"' + "x" * pad + '"}}')
    await r.probe()
    assert r.connection() == before
    # Over the cap aiohttp closes the socket with 1009 (message too big) before the bot sees the frame:
    # accepted, since mirai-api-http never sends such frames; what matters is that the link comes back.
    await r.peer.send_raw('{"pad":"' + "x" * (r.adapter.max_frame + 10) + '"}')
    if isinstance(r.peer, FakeMirai):
        peer = r.peer
        await eventually(lambda: peer.closed)
        assert peer.socket is not None and peer.socket.close_code == 1009
        await peer.connect()  # mirai-api-http redials after its reconnectInterval
    else:
        await eventually(lambda: r.peer.connections == 2)
    await eventually(lambda: r.adapter.connected and r.status.state is LinkState.UP)
    await r.probe()


@MODES
async def test_wrong_types_in_every_event_kind(
    rig: Callable[..., Any], mode: str, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    """Every field of a real event of each kind, at every depth, replaced by values of other types.

    The variants may cause nothing the real event did not: a variant that keeps the event's identity
    is the same message again (deduplicated) or the same request; every other one must be dropped by
    the adapter. So every event handed on, model request and command during the corpus must match the
    real event's, and the same connection must still answer.
    """
    r: Rig = await rig(mode)
    for kind in KINDS:
        sample = EVENTS[kind]["data"]
        like = sample if kind in MESSAGE_KINDS else None
        events, asked, sent = len(r.events), len(fake_llm.requests), len(r.commands)
        await r.peer.push(sample)
        await r.probe(like)
        genuine = (set(identities(r, events)), set(model_texts(fake_llm, asked)), set(chat_commands(r, sent)))
        assert genuine[0] or kind in QUIET_KINDS, kind
        if kind in MESSAGE_KINDS:
            assert genuine[1] and genuine[2], kind
        elif kind not in QUIET_KINDS:
            assert genuine[2], kind  # the poke reply, the request's answer
        before = r.connection()
        events, asked, sent = len(r.events), len(fake_llm.requests), len(r.commands)
        variants = list(wrong_types(sample))
        for _, variant in variants:
            await r.peer.push(variant)
        await r.probe(like)
        assert r.connection() == before, kind
        assert set(identities(r, events)) <= genuine[0], kind
        assert set(model_texts(fake_llm, asked)) <= genuine[1], kind
        assert set(chat_commands(r, sent)) <= genuine[2], kind
        assert len(variants) > 20, kind
    assert any("with a malformed" in line for line in log_lines)
    # every variant was recognised for what it is: none needed the last-resort boundary
    assert not any("could not be handled" in line for line in log_lines)


@MODES
async def test_a_handler_bug_drops_one_event_and_the_link_stays(
    rig: Callable[..., Any], mode: str, fake_llm: FakeOpenAI, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r: Rig = await rig(mode)
    before = r.connection()
    fail_once(monkeypatch, r.adapter, "_message_event")
    await r.peer.push(friend_message(20001, "触发了 bug", 5))
    await r.probe()
    assert r.connection() == before
    assert [line for line in log_lines if "dropped a mirai frame (type=FriendMessage)" in line]
    assert model_texts(fake_llm, 0) == []


async def test_peer_killing_the_connection_makes_the_link_reconnect(rig: Callable[..., Any]) -> None:
    r: Rig = await rig("forward")
    server: FakeMiraiServer = r.peer  # type: ignore[assignment]
    await server.drop()
    await eventually(lambda: server.connections == 2 and r.status.state is LinkState.UP)
    assert LinkState.DOWN in r.down_seen
    await r.probe()


async def test_peer_answering_garbage_is_retried_not_fatal(rig: Callable[..., Any], log_lines: list[str]) -> None:
    r: Rig = await rig("forward")
    server: FakeMiraiServer = r.peer  # type: ignore[assignment]
    for garbage in ("garbage_upgrade", "garbage_handshake"):
        setattr(server, garbage, True)
        server.refused = 0
        await server.drop()
        await eventually(lambda: server.refused >= 3)  # tried again, and again
        assert r.status.state is not LinkState.STOPPED and not r.app.all_stopped.is_set()
        setattr(server, garbage, False)
        await eventually(lambda: r.status.state is LinkState.UP and r.adapter.connected)
        await r.probe()
    assert r.status.state is LinkState.UP


async def test_reverse_listener_status_follows_the_verified_socket(rig: Callable[..., Any]) -> None:
    r: Rig = await rig("reverse")
    peer: FakeMirai = r.peer  # type: ignore[assignment]
    assert r.status.state is LinkState.UP and r.adapter.status().healthy
    await peer.close()
    await eventually(lambda: r.status.state is LinkState.LISTENING)
    assert r.adapter.status().healthy  # listening for mirai-api-http is healthy
    await peer.connect()
    await eventually(lambda: r.status.state is LinkState.UP)
    await r.probe()


async def test_hostile_headers_and_bodies_on_the_reverse_listener(rig: Callable[..., Any]) -> None:
    r: Rig = await rig("reverse")
    port = r.adapter.port
    auth = (b"Authorization", f"Bearer {TOKEN}".encode())
    cases: list[tuple[str, str, list[tuple[bytes, bytes]], bytes, int]] = [
        ("0xFF in the token", "/", [*WS_UPGRADE, (b"Authorization", b"Bearer \xff")], b"", 403),
        ("0xFF as the whole Authorization", "/", [*WS_UPGRADE, (b"Authorization", b"\xff\xfe")], b"", 401),
        ("0xFF in the query token", "/?token=%FF", WS_UPGRADE, b"", 403),
        ("invalid UTF-8 in the token", "/", [*WS_UPGRADE, (b"Authorization", b"Bearer \xc3\x28")], b"", 403),
        ("no token", "/", WS_UPGRADE, b"", 401),
        ("0xFF in another header", "/", [*WS_UPGRADE, auth, (b"X-Other", b"\xff")], b"", 101),
        ("a body over the cap", "/", [auth], b"x" * (r.adapter.max_body + 10), 413),
        ("a deep JSON body", "/", [auth], b"[" * 100_000, 405),
        ("an invalid UTF-8 body", "/", [auth], b"\xff\xfe", 405),
    ]
    for name, path, headers, body, expected in cases:
        method = "POST" if body else "GET"
        assert await raw_request(port, method, path, headers, body) == expected, name
    await r.probe()  # the verified connection was never disturbed
    assert r.status.state is LinkState.UP


@pytest.mark.parametrize(
    ("token", "warned"),
    [("", True), ("change-me-to-random-letters", True), ("a-real-random-token", False)],
)
async def test_security_warning_for_a_missing_or_example_token(
    write_config: Callable[..., Path], log_lines: list[str], token: str, warned: bool
) -> None:
    mirai = {"qq": BOT, "reverse_ws_host": "0.0.0.0", "reverse_ws_port": free_port(), "reverse_ws_token": token}
    app = await start_bot(write_config({"mirai": mirai}))
    try:
        assert any("SECURITY" in line and "reverse_ws_token" in line for line in log_lines) is warned
        assert not any(token in line for line in log_lines if token)
    finally:
        await app.stop()
