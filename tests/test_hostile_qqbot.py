"""Official QQ bot vs hostile input and faulty peers: gateway and webhook corpus, link failures, codec fuzzing."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapters.frames import MAX_BODY, parse_frame
from adapters.link import LinkState
from adapters.qqbot import adapter as qqbot_adapter
from adapters.qqbot import codec
from adapters.qqbot.signing import fresh, key_from_secret, validation_answer, verify
from core.event import ChatType
from core.message import Image, Text
from tests.conftest import eventually, free_port
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.qq_official import FakeQQ
from tests.hostile import body_frames, fail_once, generic_frames, wrong_types
from tests.test_e2e_qqbot import (
    APPID,
    QQ,
    SECRET,
    qq_fixture,  # noqa: F401  (the `qq` fixture)
)

SAMPLES = json.loads((Path(__file__).parent / "samples" / "qqbot" / "events.json").read_text(encoding="utf-8"))
HOSTILE_TEXTS = ("敌意私聊", "敌意群聊")  # the only texts of the corpus's events that may reach the model


def prompts(fake_llm: FakeOpenAI) -> list[str]:
    """The user text of every model request."""
    return [str(request["body"]["messages"][-1]["content"]) for request in fake_llm.requests]


async def answered(q: QQ, text: str) -> None:
    """Push a normal private message and wait for its answer."""
    await q.platform.push_c2c("PROBE", text)
    await eventually(lambda: any(m["body"]["content"] == f"echo: {text}" for m in q.platform.messages), timeout=10)


def corpus_events(platform: FakeQQ, session_id: str) -> list[tuple[str, dict[str, Any]]]:
    """A real frame of each kind the shard handles, numbered like the session's next frame."""
    seq = platform.current_seq()
    c2c = {**platform.c2c_event("U-HOSTILE", HOSTILE_TEXTS[0]), "s": seq}
    group = {**platform.group_at_event("G-HOSTILE", "M-HOSTILE", HOSTILE_TEXTS[1]), "s": seq}
    user = {"id": "bot-1", "username": "测试机器人", "bot": True}
    ready = {
        "op": 0,
        "s": seq,
        "t": "READY",
        "d": {"version": 1, "session_id": session_id, "user": user, "shard": [0, 1]},
    }
    add_robot = {"op": 0, "id": "GROUP_ADD_ROBOT:1", "s": seq, "t": "GROUP_ADD_ROBOT"}
    add_robot["d"] = {"group_openid": "G-HOSTILE", "op_member_openid": "M-HOSTILE", "timestamp": 1699240248}
    return [
        ("c2c message", c2c),
        ("group message", group),
        ("ready", ready),
        ("resumed", {"op": 0, "s": seq, "t": "RESUMED", "d": ""}),
        ("heartbeat ack", {"op": 11}),
        ("hello", {"op": 10, "d": {"heartbeat_interval": 300}}),
        ("group add robot", add_robot),
    ]


def assert_nothing_hostile_reached_chat(q: QQ, fake_llm: FakeOpenAI, allowed: set[str]) -> None:
    assert set(prompts(fake_llm)) <= allowed, set(prompts(fake_llm)) - allowed
    contents = {m["body"]["content"] for m in q.platform.messages}
    assert contents <= {f"echo: {text}" for text in allowed}, contents


# ---- the gateway link ------------------------------------------------------------------------------------------


async def test_gateway_survives_the_hostile_corpus_on_the_same_connection(qq: Any, fake_llm: FakeOpenAI) -> None:
    q: QQ = await qq()
    platform, [status] = q.platform, q.adapter.links
    since, connections = status.since, platform.connections
    allowed = set(HOSTILE_TEXTS)

    def same_connection() -> bool:
        return platform.connections == connections and status.state is LinkState.UP and status.since == since

    for number, (name, frame) in enumerate(generic_frames()):
        if name == "over the size cap":
            continue  # below: aiohttp closes the socket with 1009 for a frame over max_msg_size
        await platform.send_raw(frame)
        if isinstance(frame, bytes):
            await platform.send_raw(frame, binary=True)
        allowed.add(f"探针{number}")
        await answered(q, f"探针{number}")
        assert same_connection(), name
    session_id = platform.handshakes[-1]["session_id"]
    for kind, event in corpus_events(platform, session_id):
        for _label, variant in wrong_types(event):
            await platform.send_raw(json.dumps(variant))
        allowed.add(f"探针 {kind}")
        await answered(q, f"探针 {kind}")
        assert same_connection(), kind
    await asyncio.wait_for(q.app.manager.drain(), 10)
    assert_nothing_hostile_reached_chat(q, fake_llm, allowed)

    # A frame over the cap is the one that costs the connection (WebSocket close 1009); the shard reconnects.
    over = next(frame for name, frame in generic_frames() if name == "over the size cap")
    await platform.send_raw(over)
    await eventually(lambda: platform.connections == connections + 1 and status.state is LinkState.UP, timeout=10)
    await answered(q, "之后")


async def test_a_handler_bug_drops_one_event_and_the_shard_stays_up(
    qq: Any, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    q: QQ = await qq()
    adapter, [status] = q.adapter, q.adapter.links
    since = status.since
    fail_once(monkeypatch, adapter, "dispatch")
    await q.platform.push_c2c("U1", "撞上 bug")
    await q.platform.push_c2c("U1", "下一条")
    [reply] = await q.replies(1)
    assert reply["body"]["content"] == "echo: 下一条"
    assert any("dropped a qqbot frame (t=C2C_MESSAGE_CREATE)" in line for line in log_lines)
    assert q.platform.connections == 1 and status.state is LinkState.UP and status.since == since


async def test_a_connection_cut_by_the_peer_goes_down_and_resumes(qq: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qqbot_adapter, "RECONNECT_DELAYS", (0.5, 1.0))  # long enough to see DOWN
    q: QQ = await qq()
    [status] = q.adapter.links
    await q.platform.push_c2c("U1", "一")
    await q.replies(1)
    await q.platform.drop()
    await eventually(lambda: status.state is LinkState.DOWN)
    await q.platform.push_c2c("U2", "断线时")
    await q.platform.wait_ready(2, timeout=10)
    await eventually(lambda: status.state is LinkState.UP)
    _, reply = await q.replies(2)
    assert reply["body"]["content"] == "echo: 断线时" and q.platform.resumes


async def test_garbage_from_the_token_endpoint_and_gateway_is_retried(qq: Any) -> None:
    platform = FakeQQ(APPID, SECRET)
    platform.heartbeat_interval_ms = 300
    await platform.start()
    platform.token_answers = [
        (502, b"<html>bad gateway</html>"),
        (200, b'{"access_token": 5}'),
        (429, b'{"code": 1, "message": "too fast"}'),
        (200, b"[" * 100_000),
    ]
    platform.gateway_answers = [(200, b'{"url": 7}'), (500, b'{"code": 500000}'), (200, b"\xff\xfe")]
    q: QQ = await qq(platform=platform)
    assert not platform.token_answers and not platform.gateway_answers
    assert q.adapter.links[0].state is LinkState.UP
    await q.platform.push_c2c("U1", "好了")
    [reply] = await q.replies(1)
    assert reply["body"]["content"] == "echo: 好了"


async def test_an_unreachable_token_url_is_retried_until_it_answers(qq: Any) -> None:
    platform = FakeQQ(APPID, SECRET)
    platform.heartbeat_interval_ms = 300
    await platform.start()
    await platform.stop()  # the port is known, nothing listens on it
    q: QQ = await qq(platform=platform, wait=False)
    [status] = q.adapter.links
    await eventually(lambda: status.state is LinkState.DOWN and "access token" in status.reason)
    await platform.start()
    await platform.wait_ready(1, timeout=10)
    await eventually(lambda: status.state is LinkState.UP)
    assert not q.app.all_stopped.is_set()


async def test_a_refused_secret_stops_the_link_with_one_line(qq: Any, log_lines: list[str]) -> None:
    q: QQ = await qq(wait=False, secret="a-wrong-secret")
    await asyncio.wait_for(q.app.all_stopped.wait(), 10)
    [status] = q.adapter.links
    assert status.state is LinkState.STOPPED
    assert "100016" in status.reason and "[qqbot] appid and secret" in status.reason
    stopped = [line for line in log_lines if "not reconnecting" in line]
    assert len(stopped) == 1 and "[qqbot] appid and secret" in stopped[0]
    assert not q.platform.identifies and q.platform.connections == 0
    assert not any("a-wrong-secret" in line or SECRET in line for line in log_lines)


async def test_close_codes_take_the_path_classify_gives_them(qq: Any) -> None:
    q: QQ = await qq()
    [shard] = q.adapter.shards
    for code, handshakes in ((4008, 2), (4900, 3), (4004, 4)):
        await q.platform.close_socket(code)
        await q.platform.wait_ready(handshakes, timeout=10)
    assert [h["t"] for h in q.platform.handshakes] == ["READY", "RESUMED", "READY", "READY"]
    assert len(q.platform.tokens_issued) == 1  # 4004 fetched the token again: the fake gives the live one
    assert shard.session_id == q.platform.handshakes[-1]["session_id"]
    await q.platform.close_socket(4010)
    await asyncio.wait_for(q.app.all_stopped.wait(), 10)
    assert "[qqbot] shards" in q.adapter.links[0].reason


# ---- the webhook listener --------------------------------------------------------------------------------------


async def start_webhook(qq: Any, **section: Any) -> tuple[QQ, str]:
    port = free_port()
    q: QQ = await qq(mode="webhook", webhook_host="127.0.0.1", webhook_port=port, webhook_path="/qqbot", **section)
    return q, f"http://127.0.0.1:{port}/qqbot"


async def test_webhook_survives_the_hostile_corpus(qq: Any, fake_llm: FakeOpenAI) -> None:
    q, url = await start_webhook(qq)
    platform = q.platform
    for name, frame in body_frames():
        body = frame if isinstance(frame, bytes) else frame.encode("utf-8", errors="surrogatepass")
        signed, _ = await platform.send_webhook(url, body)
        unsigned, _ = await platform.send_webhook(url, body, sign=False)
        if len(body) > MAX_BODY:
            assert (signed, unsigned) == (413, 413), name
        else:
            assert signed in (200, 400) and unsigned == 401, (name, signed, unsigned)
    for kind, event in corpus_events(platform, "sess-x"):
        for label, variant in wrong_types(event):
            status, _ = await platform.send_webhook(url, variant)
            assert status == 200, (kind, label, status)  # acknowledged (op 12), then dropped or answered
    status, _ = await platform.send_webhook(url, platform.c2c_event("PROBE", "正常"))
    assert status == 200
    await eventually(lambda: any(m["body"]["content"] == "echo: 正常" for m in platform.messages), timeout=10)
    await eventually(lambda: len(q.adapter.tasks) == 0)
    await asyncio.wait_for(q.app.manager.drain(), 10)
    assert_nothing_hostile_reached_chat(q, fake_llm, {*HOSTILE_TEXTS, "正常"})
    [listener] = q.adapter.links
    assert listener.name == "QQ webhook" and listener.state is LinkState.LISTENING and listener.last_event


# ---- the codec -------------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
field = st.sampled_from(["U1", "", " 你好 ", "image/png", "example.com/a.png"]) | json_values
attachment = st.fixed_dictionaries({}, optional={"content_type": field, "url": field}) | json_values
message_data = st.fixed_dictionaries(
    {},
    optional={
        "id": field,
        "author": st.fixed_dictionaries({}, optional={"user_openid": field, "member_openid": field, "id": field})
        | json_values,
        "content": field,
        "group_openid": field,
        "attachments": st.lists(attachment, max_size=3) | json_values,
        "session_id": field,
        "heartbeat_interval": json_values,
        "plain_token": field,
        "event_ts": field,
    },
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from([0, 10, 11, 13]) | json_values,
        "t": st.sampled_from([*codec.MESSAGE_EVENTS, "READY", "RESUMED"]) | json_values,
        "s": json_values,
        "d": message_data | json_values,
    },
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(payloads)
def test_no_payload_raises_out_of_the_decoders(payload: dict[str, Any]) -> None:
    event = codec.decode_message(payload, "qqbot", APPID)
    if event is not None:
        assert event.user_id and event.message_id and isinstance(event.group_id, str)
        assert all(isinstance(seg, Text | Image) for seg in event.message)
    seq = codec.sequence(payload)
    assert seq is None or 0 <= seq <= codec.MAX_SEQ
    interval = codec.heartbeat_seconds(payload)
    assert math.isfinite(interval) and codec.MIN_HEARTBEAT <= interval <= codec.MAX_HEARTBEAT
    assert isinstance(codec.session_id(payload), str)
    check = codec.validation(payload)
    assert check is None or isinstance(check.plain_token, str)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_no_wire_bytes_raise_out_of_parsing_and_decoding(data: bytes | str) -> None:
    frame = parse_frame(_NullLog(), data)
    if frame is not None:
        codec.decode_message(frame, "qqbot", APPID)


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=20), st.binary(max_size=200), st.floats(allow_nan=False))
def test_signature_and_timestamp_checks_never_raise(
    signature: bytes, timestamp: bytes, body: bytes, now: float
) -> None:
    key = key_from_secret(SECRET)
    assert not verify(key, signature, timestamp, body)
    assert not verify(key, signature.decode("utf-8", errors="surrogateescape"), timestamp, body)
    fresh(timestamp, now)
    fresh(timestamp.decode("utf-8", errors="surrogateescape"), now)


@FUZZ
@given(st.text(max_size=200), st.booleans())
def test_text_round_trips_through_a_reply_and_an_incoming_message(text: str, group: bool) -> None:
    assume(codec.unlinkable(text) == text)  # URLs are broken on purpose: that text does not come back
    content = codec.text_reply((Text(text),), "m", 1)["content"]
    d: dict[str, Any] = {"id": "m1", "content": content}
    if group:
        d |= {"author": {"member_openid": "M1"}, "group_openid": "G1"}
    else:
        d |= {"author": {"user_openid": "U1"}}
    event = codec.decode_message(
        {"op": 0, "t": codec.GROUP_MESSAGE if group else codec.PRIVATE_MESSAGE, "d": d}, "q", ""
    )
    assert event is not None
    assert event.message == ((Text(text.strip()),) if text.strip() else ())


@FUZZ
@given(st.text(max_size=100), st.text(max_size=20))
def test_op13_answers_verify_as_signatures_of_event_ts_and_plain_token(plain_token: str, event_ts: str) -> None:
    key = key_from_secret(SECRET)
    answer = validation_answer(key, plain_token, event_ts)
    assert answer["plain_token"] == plain_token
    assert verify(key, answer["signature"], event_ts, plain_token.encode())


class _NullLog:
    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass


# ---- documented payloads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES["events"]))
def test_documented_payloads_decode(name: str) -> None:
    sample = SAMPLES["events"][name]
    payload, expect = sample["payload"], sample["expect"]
    event = codec.decode_message(payload, "qqbot", APPID)
    if payload.get("t") in codec.MESSAGE_EVENTS:
        assert event is not None
        assert event.chat_type is ChatType(expect["chat_type"]) and event.to_me
        assert (event.user_id, event.group_id, event.message_id) == (
            expect["user_id"],
            expect["group_id"],
            expect["message_id"],
        )
        assert event.message == (Text(expect["text"]),)
        return
    assert event is None
    if name in ("ready", "resumed"):
        assert (codec.session_id(payload), codec.sequence(payload)) == (expect["session_id"], expect["seq"])
    elif name == "hello":
        assert codec.heartbeat_seconds(payload) == expect["heartbeat_seconds"]
    elif name == "validation":
        check = codec.validation(payload)
        assert check is not None
        assert validation_answer(key_from_secret("DG5g3B4j9X2KOErG"), check.plain_token, check.event_ts) == expect


def test_timestamps_are_fresh_only_within_five_minutes() -> None:
    now = time.time()
    assert fresh(str(int(now)), now) and fresh(str(int(now) - 299), now) and fresh(str(int(now) + 299), now)
    assert not fresh(str(int(now) - 301), now) and not fresh(str(int(now) + 301), now)
    for bad in ("", "-5", "1.5e9", " 1700000000", "1700000000\n", "９", "9" * 40, b"\xff"):
        assert not fresh(bad, now), bad
