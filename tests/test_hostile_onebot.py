"""Hostile input and peer faults through all four OneBot 11 transports (reverse WS, forward WS, HTTP + POST/SSE)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.link import LinkState, LinkStatus
from bot import App
from core.event import Event, MessageEvent
from core.message import describe
from tests.conftest import eventually, free_port, start_bot
from tests.fakes.onebot_impl import FakeOneBot, sent_text
from tests.fakes.openai_server import FakeOpenAI
from tests.hostile import WS_UPGRADE, body_frames, fail_once, generic_frames, raw_request, wrong_types

BOT = 2976543210  # the account the recorded samples in tests/samples/onebot were made with
TOKEN = "onebot-token-77ab"
SECRET = "post-secret-91cd"
EVENTS: dict[str, Any] = json.loads((Path(__file__).parent / "samples" / "onebot" / "events.json").read_text("utf-8"))
# A public payload, verbatim from nonebot/adapter-onebot tests/v11/events.json
# (commit 106b22b3aeda19d14581fb7e9135b2fe8f78486d), less its "_model" test tag.
EVENTS["nonebot_private_cq"] = {
    "self_id": 0,
    "time": 0,
    "post_type": "message",
    "message_type": "private",
    "sub_type": "friend",
    "message_id": 1,
    "user_id": 1,
    "message": "[CQ:at,qq=all] Test text",
    "raw_message": "[CQ:at,qq=all] Test text",
    "font": 0,
    "sender": {"user_id": 1, "nickname": "Test", "sex": "unknown", "age": 0},
}
MESSAGE_KINDS = ("private_friend", "private_group_temp", "group_reply_at", "group_cq_string", "nonebot_private_cq")
# A real event of every kind the adapter handles: messages, the bot's own, a poke, requests, lifecycle, heartbeat.
KINDS = (
    *MESSAGE_KINDS,
    "message_sent",
    "poke_notice",
    "friend_request",
    "group_invite_request",
    "lifecycle_connect",
    "heartbeat",
)
MODES = ["reverse", "forward", "http-post", "http-sse"]
DIALLED = ["forward", "http-post", "http-sse"]
PROBE = "探针"


class Rig:
    """A bot on one OneBot transport, the fake implementation, and what reached the conversation layer."""

    def __init__(self, app: App, mode: str, impl: FakeOneBot) -> None:
        self.app = app
        self.mode = mode
        self.impl = impl
        self.adapter: Any = cast(Any, app.adapters["onebot"])  # the transport's own attributes are read too
        self.events: list[Event] = []
        self.probes = 0
        self.waits: list[LinkState] = []
        handle = self.adapter.sink

        async def recording(event: Event) -> None:
            self.events.append(event)
            await handle(event)

        self.adapter.sink = recording
        if mode in DIALLED:
            self.adapter.link.sleep = self._quick_sleep

    async def _quick_sleep(self, delay: float) -> None:
        # The link sleeps only between attempts: record the state it waits in, and wait briefly.
        self.waits.append(self.status.state)
        await asyncio.sleep(0.02)

    @property
    def status(self) -> LinkStatus:
        status: LinkStatus = self.adapter.listener if self.mode == "reverse" else self.adapter.link.status
        return status

    def sends(self, since: int = 0) -> list[dict[str, Any]]:
        """What the bot sent or answered after the first `since` actions (lookups like get_msg left out)."""
        return [a for a in self.impl.actions[since:] if a["action"].startswith(("send_", "set_"))]

    def connection(self) -> tuple[Any, ...]:
        """What changes when a connection does: the fake's connections and channels, the status's since."""
        return self.impl.connections, tuple(self.impl.channels), self.status.state, self.status.since

    async def probe(self, like: dict[str, Any] | None = None) -> None:
        """A fresh message, shaped like the message event `like` (same chat, same segments) when given,
        that must be answered."""
        self.probes += 1
        text = f"{PROBE} {self.probes}"
        message_id = 900_000 + self.probes
        event = self.impl.private_message(20001, text, message_id)
        if like is not None:
            event = copy.deepcopy(like) | {"message_id": message_id, "real_id": message_id}
            if isinstance(like["message"], list):
                kept = [seg for seg in like["message"] if seg["type"] != "text"]
                event["message"] = [*kept, {"type": "text", "data": {"text": f" {text}"}}]
            else:
                event["message"] = (f"[CQ:at,qq={BOT}] " if like["message_type"] == "group" else "") + text
        seen = len(self.impl.actions)
        await self.impl.push(event)
        await eventually(lambda: any(sent_text(a).endswith(text) for a in self.sends(seen)), timeout=10)

    async def settle(self, like: dict[str, Any] | None) -> None:
        """Wait until everything sent so far has been handled: a plain probe proves every frame was read,
        then lookups (get_msg) finish, then a probe in `like`'s chat queues behind whatever they handed on."""
        await self.probe()
        await eventually(lambda: not [t for t in asyncio.all_tasks() if t.get_name() == "onebot-lookup"])
        await self.probe(like)


async def start_rig(mode: str, impl: FakeOneBot, write_config: Callable[..., Path], extra: dict[str, Any]) -> Rig:
    onebot: dict[str, Any] = {"qq": BOT, "access_token": TOKEN}
    if mode == "reverse":
        onebot |= {"reverse_ws_host": "127.0.0.1", "reverse_ws_port": free_port()}
    elif mode == "forward":
        onebot["ws_url"] = await impl.serve_forward()
    else:
        onebot["http_url"] = await impl.serve_http()
        if mode == "http-post":
            port = free_port()
            onebot |= {"http_post_host": "127.0.0.1", "http_post_port": port, "secret": SECRET}
            impl.post_url, impl.post_secret = f"http://127.0.0.1:{port}/", SECRET
    base: dict[str, Any] = {
        "mirai": None,
        "onebot": onebot,
        "system": {"accept_friend_request": True, "accept_group_invite": True, "reply_temp": True},
        # variants that are new messages queue up behind each other: no queue limit, no "queued" notices
        "response": {"poke_reply": "别戳啦", "max_queue_size": 0, "queued_notice_size": 0},
    }
    app = await start_bot(write_config(base | extra))
    rig = Rig(app, mode, impl)
    if mode == "reverse":
        await impl.connect_reverse(f"ws://127.0.0.1:{onebot['reverse_ws_port']}/onebot/v11/ws")
    await eventually(lambda: app.adapters["onebot"].connected, timeout=10)
    return rig


@pytest.fixture
async def rig(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Rig] = []

    async def start(mode: str, extra: dict[str, Any] | None = None) -> Rig:
        started.append(await start_rig(mode, FakeOneBot(BOT, access_token=TOKEN), write_config, extra or {}))
        return started[-1]

    yield start
    for started_rig in started:
        await started_rig.app.stop()
        await started_rig.impl.close()


def model_texts(fake_llm: FakeOpenAI, since: int) -> list[str]:
    """The user text of each model request after the first `since`, probes left out."""
    texts = [str(r["body"]["messages"][-1]["content"]) for r in fake_llm.requests[since:]]
    return [text for text in texts if PROBE not in text]


class Reaction:
    """What the bot did about some frames: events it handed on, texts it asked the model, what it sent.

    Compared with the genuine event's reaction: the same people, groups, model texts, messages and
    request answers, nothing else (a wrong value that got through would show up as a new one).
    """

    def __init__(self, rig: Rig, fake_llm: FakeOpenAI, events: int, asked: int, actions: int) -> None:
        self.events = [e for e in rig.events[events:] if not _is_probe(e)]
        self.texts = set(model_texts(fake_llm, asked))
        self.sends = [a for a in rig.sends(actions) if PROBE not in sent_text(a)]
        self.users = {e.user_id for e in self.events} | {str(a["params"].get("user_id")) for a in self.sends}
        self.groups = {e.group_id for e in self.events if e.group_id}
        self.groups |= {str(a["params"]["group_id"]) for a in self.sends if "group_id" in a["params"]}
        self.messages = {_message(a) for a in self.sends if a["action"].startswith("send_")}
        self.answers = {json.dumps(a, sort_keys=True) for a in self.sends if a["action"].startswith("set_")}

    def within(self, genuine: Reaction) -> list[str]:
        """How this reaction goes beyond the genuine event's (empty when it does not)."""
        problems = [f"user {u}" for u in self.users - genuine.users - {"None"}]
        problems += [f"group {g}" for g in self.groups - genuine.groups]
        problems += [f"asked the model {t!r}" for t in self.texts - genuine.texts]
        problems += [f"sent {m}" for m in self.messages - genuine.messages]
        problems += [f"answered {a}" for a in self.answers - genuine.answers]
        problems += [f"handed on a {type(e).__name__}" for e in self.events if not _kind_in(e, genuine.events)]
        return problems


def _is_probe(event: Event) -> bool:
    return isinstance(event, MessageEvent) and PROBE in describe(event.message)


def _message(action: dict[str, Any]) -> str:
    """A send action's message (or forward nodes), the reply segment (the quoted message id) left out."""
    params = action["params"]
    message = params.get("message", params.get("messages"))
    if isinstance(message, list):
        message = [seg for seg in message if seg.get("type") != "reply"]
    return json.dumps(message, sort_keys=True, ensure_ascii=False)


def _kind_in(event: Event, genuine: list[Event]) -> bool:
    kinds = {(type(e), getattr(e, "kind", "")) for e in genuine}
    return (type(event), getattr(event, "kind", "")) in kinds


@pytest.mark.parametrize("mode", MODES)
async def test_generic_frames_keep_the_same_connection(
    rig: Callable[..., Any], mode: str, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    r: Rig = await rig(mode)
    before = r.connection()
    asked, actions = len(fake_llm.requests), len(r.impl.actions)
    listener = mode in ("reverse", "forward")
    for name, frame in generic_frames(r.adapter.max_frame) if listener else body_frames():
        if listener and name == "over the size cap":
            continue  # closes the socket (1009): see test_frame_over_the_cap_closes_and_the_link_comes_back
        statuses = await r.impl.push_raw(frame)
        assert all(status in (204, 400, 413) for status in statuses), (name, statuses)  # http-post: never 5xx
        await r.probe()
        assert r.connection() == before, name
    assert model_texts(fake_llm, asked) == [] and [a for a in r.sends(actions) if PROBE not in sent_text(a)] == []
    assert any("nested more than" in line for line in log_lines)
    assert any("malformed frame" in line for line in log_lines)
    if mode == "http-sse":
        assert any("dropped a server-sent event over" in line for line in log_lines)
        assert any("not UTF-8" in line for line in log_lines)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
async def test_frame_over_the_cap_closes_and_the_link_comes_back(rig: Callable[..., Any], mode: str) -> None:
    r: Rig = await rig(mode)
    before = r.connection()
    # Exactly at the cap is still a frame: it is parsed (and dropped as an unknown event), the socket stays.
    pad = r.adapter.max_frame - len('{"post_type":"pad","pad":""}')
    await r.impl.push_raw('{"post_type":"pad","pad":"' + "x" * pad + '"}')
    await r.probe()
    assert r.connection() == before
    # Over the cap aiohttp closes the socket with 1009 (message too big) before the bot sees the frame:
    # accepted, since no implementation sends such frames; what matters is that the link comes back.
    await r.impl.push_raw('{"pad":"' + "x" * (r.adapter.max_frame + 10) + '"}')
    await eventually(lambda: r.impl.channels == [])
    if mode == "reverse":
        await r.impl.connect_reverse(f"ws://127.0.0.1:{r.adapter.port}/")  # the implementation redials
    await eventually(lambda: r.status.state is LinkState.UP and r.adapter.connected)
    assert r.impl.connections == 2
    await r.probe()


@pytest.mark.parametrize("mode", MODES)
async def test_wrong_types_in_every_event_kind(
    rig: Callable[..., Any], mode: str, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    """Every field of a real event of each kind, at every depth, replaced by values of other types.

    A variant may be the real event again (deduplicated, or answered again to the same person with the
    same text), or a valid event of another shape (a poke with `group_id: null` is a private poke); it
    must never carry a wrong value into the conversation layer, the model or the chat, nor reach another
    user, group or request. The same connection must still answer afterwards.
    """
    r: Rig = await rig(mode)
    for kind in KINDS:
        sample = EVENTS[kind]
        like = sample if kind in MESSAGE_KINDS else None
        marks = len(r.events), len(fake_llm.requests), len(r.impl.actions)
        await r.impl.push(sample)
        await r.settle(like)
        genuine = Reaction(r, fake_llm, *marks)
        if kind in MESSAGE_KINDS:
            assert genuine.texts and genuine.messages, kind
        elif kind in ("poke_notice", "friend_request", "group_invite_request"):
            assert genuine.messages or genuine.answers, kind
        before = r.connection()
        marks = len(r.events), len(fake_llm.requests), len(r.impl.actions)
        variants = list(wrong_types(sample))
        for _, variant in variants:
            statuses = await r.impl.push_raw(json.dumps(variant, ensure_ascii=False))
            assert all(status in (204, 400) for status in statuses), statuses
        await r.settle(like)
        assert r.connection() == before, kind
        assert Reaction(r, fake_llm, *marks).within(genuine) == [], kind
        assert len(variants) > 20, kind
    assert any("with a malformed" in line for line in log_lines)
    # every variant was recognised for what it is: none needed the last-resort boundary
    assert not any("could not be handled" in line for line in log_lines)


@pytest.mark.parametrize("mode", MODES)
async def test_a_handler_bug_drops_one_event_and_the_link_stays(
    rig: Callable[..., Any], mode: str, fake_llm: FakeOpenAI, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r: Rig = await rig(mode)
    before = r.connection()
    fail_once(monkeypatch, r.adapter, "_on_message")
    await r.impl.push(r.impl.private_message(20001, "触发了 bug", 5))
    await r.probe()
    assert r.connection() == before
    assert [line for line in log_lines if "dropped a onebot frame (post_type=message)" in line]
    assert model_texts(fake_llm, 0) == []


@pytest.mark.parametrize("mode", DIALLED)
async def test_peer_killing_the_connection_makes_the_link_reconnect(rig: Callable[..., Any], mode: str) -> None:
    r: Rig = await rig(mode)
    if mode == "forward":
        await r.impl.drop()
    elif mode == "http-sse":
        await r.impl.drop_sse()
    else:
        await r.impl.stop_http()
        await r.impl.push(r.impl.private_message(20001, "答案发不出去", 7))  # the reply finds the API gone
        await eventually(lambda: r.status.state is not LinkState.UP)
        await r.impl.serve_http()
    await eventually(lambda: r.status.state is LinkState.UP and r.adapter.connected)
    assert LinkState.DOWN in r.waits
    await r.probe()


@pytest.mark.parametrize("mode", DIALLED)
async def test_peer_answering_garbage_is_retried_not_fatal(rig: Callable[..., Any], mode: str) -> None:
    r: Rig = await rig(mode)
    r.impl.garbage_status = 500
    if mode == "forward":
        await r.impl.drop()
    elif mode == "http-sse":
        await r.impl.drop_sse()
    else:
        await r.impl.stop_http()
        await r.impl.push(r.impl.private_message(20001, "答案发不出去", 7))  # the reply finds the API gone
        await eventually(lambda: r.status.state is not LinkState.UP)
        await r.impl.serve_http()
    await eventually(lambda: r.impl.refused >= 3)  # tried again, and again
    assert r.status.state is not LinkState.STOPPED and not r.app.all_stopped.is_set()
    r.impl.garbage_status = None
    await eventually(lambda: r.status.state is LinkState.UP and r.adapter.connected)
    await r.probe()


async def test_reverse_listener_status_follows_the_api_socket(rig: Callable[..., Any]) -> None:
    r: Rig = await rig("reverse")
    assert r.status.state is LinkState.UP and r.adapter.status().healthy
    await r.impl.drop()
    await eventually(lambda: r.status.state is LinkState.LISTENING)
    assert r.adapter.status().healthy  # listening for the implementation is healthy
    await r.impl.connect_reverse(f"ws://127.0.0.1:{r.adapter.port}/")
    await eventually(lambda: r.status.state is LinkState.UP)
    await r.probe()


async def test_hostile_headers_and_bodies_on_the_reverse_listener(rig: Callable[..., Any]) -> None:
    r: Rig = await rig("reverse")
    port = r.adapter.port
    auth = (b"Authorization", f"Bearer {TOKEN}".encode())
    cases: list[tuple[str, str, list[tuple[bytes, bytes]], bytes, int]] = [
        ("0xFF in the token", "/", [*WS_UPGRADE, (b"Authorization", b"Bearer \xff")], b"", 403),
        ("0xFF as the whole Authorization", "/", [*WS_UPGRADE, (b"Authorization", b"\xff\xfe")], b"", 401),
        ("0xFF in the query token", "/?access_token=%FF", WS_UPGRADE, b"", 403),
        ("invalid UTF-8 in the token", "/", [*WS_UPGRADE, (b"Authorization", b"Token \xc3\x28")], b"", 403),
        ("no token", "/", WS_UPGRADE, b"", 401),
        (
            "0xFF in X-Self-ID",
            "/",
            [*WS_UPGRADE, auth, (b"X-Client-Role", b"Event"), (b"X-Self-ID", b"\xff")],
            b"",
            101,
        ),
        ("0xFF in X-Client-Role", "/", [*WS_UPGRADE, auth, (b"X-Client-Role", b"\xff")], b"", 101),
        ("a body over the cap", "/", [auth], b"x" * (r.adapter.max_body + 10), 413),
        ("a deep JSON body", "/", [auth], b"[" * 100_000, 405),
        ("an invalid UTF-8 body", "/", [auth], b"\xff\xfe", 405),
    ]
    for name, path, headers, body, expected in cases:
        assert await raw_request(port, "POST" if body else "GET", path, headers, body) == expected, name
    assert r.adapter.self_id == str(BOT)
    await r.probe()  # the implementation's connection was never disturbed
    assert r.status.state is LinkState.UP


async def test_hostile_headers_and_bodies_on_the_webhook(rig: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    r: Rig = await rig("http-post")
    port = r.adapter.port

    def signed(body: bytes) -> tuple[bytes, bytes]:
        return b"X-Signature", b"sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest().encode()

    event = json.dumps(r.impl.private_message(20001, "伪造的", 8)).encode()
    json_type = (b"Content-Type", b"application/json")
    deep, bad_utf8 = b"[" * 100_000 + b"]" * 100_000, b'{"post_type":"\xff"}'
    cases: list[tuple[str, list[tuple[bytes, bytes]], bytes, int]] = [
        ("0xFF in X-Signature", [json_type, (b"X-Signature", b"sha1=\xff")], event, 403),
        ("invalid UTF-8 in X-Signature", [json_type, (b"X-Signature", b"\xc3\x28")], event, 403),
        ("no X-Signature", [json_type], event, 401),
        ("0xFF in Authorization", [json_type, signed(b"{}"), (b"Authorization", b"Bearer \xff")], b"{}", 204),
        ("0xFF in X-Self-ID", [json_type, signed(b"{}"), (b"X-Self-ID", b"\xff")], b"{}", 204),
        ("a body over the cap", [json_type], b"x" * (r.adapter.max_body + 10), 413),
        ("a deep JSON body", [json_type, signed(deep)], deep, 400),
        ("an invalid UTF-8 body", [json_type, signed(bad_utf8)], bad_utf8, 400),
        ("not JSON at all", [json_type, signed(b"\x00\x01")], b"\x00\x01", 400),
    ]
    for name, headers, body, expected in cases:
        assert await raw_request(port, "POST", "/", headers, body) == expected, name
    # Unsigned posts are refused before their body is read: a chunked body that never comes is not waited for.
    chunked = [json_type, (b"Transfer-Encoding", b"chunked"), (b"Connection", b"keep-alive")]
    assert await raw_request(port, "POST", "/", chunked, timeout=5) == 401
    await r.probe()
    assert model_texts(fake_llm, 0) == []
