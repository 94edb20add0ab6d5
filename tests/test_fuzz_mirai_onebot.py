"""Property tests of the Mirai and OneBot codecs and event handlers, the SSE reader and the echo store."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.echo import EchoStore
from adapters.mirai.codec import decode_chain, encode_chain
from adapters.mirai.reverse import MiraiReverse
from adapters.mirai.settings import MiraiSettings
from adapters.onebot.codec import decode_forward_result, decode_message, encode_cq, encode_message, parse_cq
from adapters.onebot.settings import OneBotSettings
from adapters.onebot.transports import OneBotReverse
from adapters.sse import sse_data
from core.errors import ActionFailedError, NotConnectedError
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent
from core.message import At, AtAll, Dice, Face, Message, Quote, Segment, Text
from tests.hostile import Sink, json_values, small_json

EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QQ = re.compile(r"[1-9][0-9]{0,18}")
BOT = 10001

ids = st.integers(1, 2**62)


def assert_well_formed(events: list[Event]) -> None:
    """What the conversation layer receives: ids that are QQ numbers, whatever the wire said."""
    for event in events:
        assert QQ.fullmatch(event.user_id), event
        if isinstance(event, MessageEvent) and event.chat_type in (ChatType.GROUP, ChatType.TEMP):
            assert QQ.fullmatch(event.group_id), event
        if isinstance(event, NoticeEvent | RequestEvent) and event.group_id:
            assert QQ.fullmatch(event.group_id), event
        if isinstance(event, MessageEvent):
            assert isinstance(event.sender_name, str) and all(isinstance(seg, Segment) for seg in event.message)


# --- Mirai ----------------------------------------------------------------------------------------

MIRAI_TYPES = [
    "Source", "Plain", "At", "AtAll", "Face", "Image", "FlashImage", "Voice", "Xml", "Json", "App", "Poke", "Dice",
    "MarketFace", "MusicShare", "Forward", "File", "ShortVideo", "Quote", "MiraiCode", "Unknown",
]  # fmt: skip
MIRAI_FIELDS = [
    "id", "time", "text", "target", "display", "faceId", "name", "isSuperFace", "imageId", "url", "path", "base64",
    "voiceId", "xml", "json", "content", "value", "kind", "title", "summary", "jumpUrl", "senderId", "groupId",
    "targetId", "origin", "nodeList", "display", "messageChain", "senderName", "messageId", "messageRef", "size",
]  # fmt: skip
mirai_element = st.recursive(
    st.builds(
        lambda kind, body: {**body, "type": kind},
        st.sampled_from(MIRAI_TYPES),
        st.dictionaries(st.sampled_from(MIRAI_FIELDS), small_json, max_size=4),
    ),
    # Quotes and forwards carry whole chains, which may quote or forward again.
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("Quote"), "id": ids, "origin": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries(
            {
                "type": st.just("Forward"),
                "nodeList": st.lists(
                    st.fixed_dictionaries({"senderId": ids, "messageChain": st.lists(inner, max_size=3)}), max_size=3
                ),
            }
        ),
    ),
    max_leaves=10,
)


@EXAMPLES
@given(json_values)
def test_mirai_decoder_takes_any_json(value: Any) -> None:
    decoded = decode_chain(value)
    assert all(isinstance(seg, Segment) for seg in decoded.message)
    assert decoded.message_id == "" or re.fullmatch(r"-?[0-9]{1,19}", decoded.message_id)


@EXAMPLES
@given(st.lists(mirai_element | small_json, max_size=6))
def test_mirai_element_shaped_garbage_never_raises(chain: list[Any]) -> None:
    decoded = decode_chain(chain)
    assert all(isinstance(seg, Segment) for seg in decoded.message)
    sources = sum(1 for el in chain if isinstance(el, dict) and el.get("type") == "Source")
    assert len(decoded.message) == len(chain) - sources  # one segment per element, Source aside


MIRAI_EVENTS = [
    "FriendMessage", "GroupMessage", "TempMessage", "StrangerMessage", "FriendSyncMessage", "NudgeEvent",
    "NewFriendRequestEvent", "BotInvitedJoinGroupRequestEvent", "BotOnlineEvent", "BotOfflineEventForce",
    "MemberJoinEvent",
]  # fmt: skip


@st.composite
def mirai_events(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed event of a random kind with a few fields replaced by garbage or left out."""
    group = {"id": draw(ids), "name": draw(st.text(max_size=5)), "permission": "MEMBER"}
    sender = {
        "id": draw(ids | st.just(BOT)),
        "nickname": draw(st.text(max_size=5)),
        "memberName": draw(st.text(max_size=5)),
        "permission": draw(st.sampled_from(["OWNER", "ADMINISTRATOR", "MEMBER", "x"])),
        "group": group,
    }
    event: dict[str, Any] = {
        "sender": sender,
        "messageChain": [
            {"type": "Source", "id": draw(st.integers(-(2**31), 2**31)), "time": 1},
            *draw(st.lists(mirai_element, max_size=3)),
        ],
        "fromId": draw(ids),
        "target": draw(st.just(BOT) | ids),
        "subject": {"id": draw(ids), "kind": draw(st.sampled_from(["Group", "Friend", "Stranger", "x"]))},
        "eventId": draw(ids),
        "groupId": draw(st.just(0) | ids),
        "message": draw(st.text(max_size=8)),
        "qq": draw(ids),
    }
    for where in (event, sender, group):
        for key in draw(st.lists(st.sampled_from(sorted(where)), max_size=2, unique=True)):
            where[key] = draw(small_json)
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=2, unique=True)):
        del event[key]
    return {"type": draw(st.sampled_from(MIRAI_EVENTS)), **event}


@EXAMPLES
@given(mirai_events() | st.dictionaries(st.text(max_size=10), json_values).map(lambda d: {**d, "type": "GroupMessage"}))
def test_mirai_events_never_raise_and_only_well_formed_ones_get_through(
    loop: asyncio.AbstractEventLoop, event: dict[str, Any]
) -> None:
    sink = Sink()
    adapter = MiraiReverse("mirai", MiraiSettings(qq=BOT, api_key="k"), sink)
    loop.run_until_complete(adapter._on_event(event))
    assert_well_formed(sink.events)
    for decoded in sink.events:
        if isinstance(decoded, MessageEvent | NoticeEvent):
            assert decoded.user_id != str(BOT)  # the bot's own messages and pokes are never news
        if isinstance(decoded, RequestEvent):
            assert QQ.fullmatch(str(decoded.raw["eventId"]))


mirai_plain = st.one_of(
    st.text(min_size=1).map(Text),
    ids.map(str).map(At),
    st.just(AtAll()),
    st.builds(Face, st.integers(0, 10**6).map(str), big=st.booleans()),
    st.integers(1, 6).map(Dice),
)


@EXAMPLES
@given(st.lists(mirai_plain, max_size=6))
def test_mirai_encoding_round_trips(segments: list[Segment]) -> None:
    message: Message = tuple(segments)
    assert decode_chain(encode_chain(message)).message == message


# --- OneBot ---------------------------------------------------------------------------------------

ONEBOT_TYPES = [
    "text", "face", "image", "record", "video", "at", "reply", "forward", "node", "json", "xml", "poke", "dice",
    "rps", "file", "markdown", "mface", "music", "share", "contact", "location", "unknown",
]  # fmt: skip
ONEBOT_FIELDS = [
    "text", "id", "file", "url", "type", "qq", "name", "sub_type", "subType", "file_size", "data", "content",
    "message", "user_id", "nickname", "uin", "time", "result", "emoji_id", "summary", "audio", "image", "raw",
]  # fmt: skip
onebot_segment = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(ONEBOT_TYPES), "data": st.dictionaries(st.sampled_from(ONEBOT_FIELDS), small_json)}
    ),
    # Forwards and nodes carry whole messages, which may forward again.
    lambda inner: st.fixed_dictionaries(
        {
            "type": st.sampled_from(["forward", "node"]),
            "data": st.fixed_dictionaries({"id": st.text(max_size=4), "content": st.lists(inner, max_size=3)}),
        }
    ),
    max_leaves=10,
)
CQ_PIECES = ["[CQ:", "]", ",", "=", "&amp;", "&#91;", "&#93;", "&#44;", "&", "at", "qq=1", "face", "id=", "text", "文"]
cq_like = st.lists(st.sampled_from(CQ_PIECES) | st.text(max_size=3), max_size=30).map("".join)


@EXAMPLES
@given(json_values)
def test_onebot_decoders_take_any_json(value: Any) -> None:
    assert all(isinstance(seg, Segment) for seg in decode_message(value))
    decode_forward_result(value)
    decode_forward_result({"messages": value, "message": value})


@EXAMPLES
@given(st.text() | cq_like)
def test_onebot_cq_strings_never_raise(text: str) -> None:
    assert all(isinstance(seg, Segment) for seg in decode_message(text))
    parsed = parse_cq(text)
    assert all(isinstance(seg["type"], str) and isinstance(seg["data"], dict) for seg in parsed)


@EXAMPLES
@given(st.lists(onebot_segment | small_json, max_size=6))
def test_onebot_segment_shaped_garbage_keeps_one_segment_each(segments: list[Any]) -> None:
    decoded = decode_message(segments)
    assert len(decoded) == len(segments) and all(isinstance(seg, Segment) for seg in decoded)


ONEBOT_POST_TYPES = ["message", "notice", "request", "meta_event", "message_sent"]


@st.composite
def onebot_events(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed event of a random kind with a few fields replaced by garbage or left out."""
    sender = {
        "user_id": draw(ids),
        "nickname": draw(st.text(max_size=5)),
        "card": draw(st.text(max_size=5)),
        "role": draw(st.sampled_from(["owner", "admin", "member", "x"])),
        "group_id": draw(ids),
    }
    event: dict[str, Any] = {
        "time": draw(st.integers(0, 2**32)),
        "self_id": BOT,
        "post_type": draw(st.sampled_from(ONEBOT_POST_TYPES)),
        "message_type": draw(st.sampled_from(["private", "group", "x"])),
        "sub_type": draw(st.sampled_from(["friend", "group", "normal", "poke", "invite", "add", "connect"])),
        "message_id": draw(st.integers(-(2**31), 2**31)),
        "user_id": draw(ids | st.just(BOT)),
        "group_id": draw(ids),
        "target_id": draw(st.just(BOT) | ids),
        "message": draw(st.lists(onebot_segment, max_size=3) | cq_like),
        "sender": sender,
        "notice_type": draw(st.sampled_from(["notify", "group_recall", "x"])),
        "request_type": draw(st.sampled_from(["friend", "group", "x"])),
        "flag": draw(st.text(max_size=8)),
        "comment": draw(st.text(max_size=8)),
        "meta_event_type": draw(st.sampled_from(["lifecycle", "heartbeat"])),
        "interval": draw(small_json),
    }
    for where in (event, sender):
        for key in draw(st.lists(st.sampled_from(sorted(where)), max_size=2, unique=True)):
            where[key] = draw(small_json)
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=2, unique=True)):
        del event[key]
    return event


@EXAMPLES
@given(
    onebot_events() | st.dictionaries(st.text(max_size=10), json_values).map(lambda d: {**d, "post_type": "message"})
)
def test_onebot_events_never_raise_and_only_well_formed_ones_get_through(
    loop: asyncio.AbstractEventLoop, event: dict[str, Any]
) -> None:
    sink = Sink()
    adapter = OneBotReverse("onebot", OneBotSettings(qq=BOT), sink)

    async def handle() -> None:
        await adapter._on_frame(event)
        await adapter.tasks.close()  # lookups of quoted messages fail fast: nothing is connected

    loop.run_until_complete(handle())
    assert_well_formed(sink.events)
    for decoded in sink.events:
        if isinstance(decoded, MessageEvent | NoticeEvent):
            assert decoded.user_id != str(BOT)  # the bot's own messages and pokes are never news
        if isinstance(decoded, RequestEvent):
            assert isinstance(decoded.raw["flag"], str) and decoded.raw["flag"].isprintable()


onebot_element = st.one_of(
    ids.map(str).map(At),
    st.just(AtAll()),
    st.builds(Face, st.integers(0, 10**6).map(str)),
)
onebot_text = st.text(st.characters(codec="utf-8"), min_size=1).map(Text)


@st.composite
def onebot_messages(draw: st.DrawFn) -> Message:
    """Elements with text between them: adjacent text is one Text in a CQ string, so it is generated as one."""
    parts: list[Segment] = []
    quote = draw(st.none() | st.integers(-(2**31), 2**31).map(str))
    if quote is not None:
        parts.append(Quote(quote))
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            parts.append(draw(onebot_text))
        parts.append(draw(onebot_element))
    if draw(st.booleans()):
        parts.append(draw(onebot_text))
    return tuple(parts)


@EXAMPLES
@given(onebot_messages())
def test_onebot_encoding_round_trips_as_array_and_as_cq_string(message: Message) -> None:
    segments = encode_message(message)
    assert decode_message(segments) == message
    assert decode_message(encode_cq(segments)) == message


@EXAMPLES
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.from_regex(r"[a-z_]{1,8}", fullmatch=True).filter(lambda t: t != "text"),
                "data": st.dictionaries(st.from_regex(r"[a-z_]{1,6}", fullmatch=True), st.text(), max_size=3),
            }
        ),
        max_size=5,
    )
)
def test_cq_escaping_round_trips_any_parameter_text(segments: list[dict[str, Any]]) -> None:
    assert parse_cq(encode_cq(segments)) == segments


# --- the SSE reader -------------------------------------------------------------------------------


def _reader(loop: asyncio.AbstractEventLoop, chunks: list[bytes]) -> aiohttp.StreamReader:
    reader = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for chunk in chunks:
        if chunk:
            reader.feed_data(chunk)
    reader.feed_eof()
    return reader


async def _events(reader: aiohttp.StreamReader, limit: int) -> list[str]:
    return [data async for data in sse_data(reader, limit)]


@EXAMPLES
@given(st.lists(st.binary(max_size=40) | st.sampled_from([b"data: ", b"\n", b"\r\n", b"\n\n", b":x\n"]), max_size=30))
def test_sse_reader_never_raises_and_keeps_the_cap(loop: asyncio.AbstractEventLoop, chunks: list[bytes]) -> None:
    events = loop.run_until_complete(_events(_reader(loop, chunks), 32))
    assert all(len(event.encode()) <= 32 for event in events)


sse_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)


@EXAMPLES
@given(st.lists(st.lists(sse_line, min_size=1, max_size=3), max_size=5), st.lists(st.integers(1, 50), max_size=10))
def test_sse_events_survive_any_chunking(
    loop: asyncio.AbstractEventLoop, events: list[list[str]], cuts: list[int]
) -> None:
    stream = b"".join(b"".join(b"data: " + line.encode() + b"\n" for line in lines) + b"\n" for lines in events)
    chunks, at = [], 0
    for cut in cuts:
        chunks.append(stream[at : at + cut])
        at += cut
    chunks.append(stream[at:])
    limit = 40
    expected = ["\n".join(lines) for lines in events if len("\n".join(lines).encode()) <= limit]
    assert loop.run_until_complete(_events(_reader(loop, chunks), limit)) == expected


# --- the echo store -------------------------------------------------------------------------------


@EXAMPLES
@given(st.permutations(range(6)), st.sets(st.integers(0, 5)))
def test_echo_store_matches_answers_in_any_order(
    loop: asyncio.AbstractEventLoop, order: list[int], unanswered: set[int]
) -> None:
    store = EchoStore("peer", timeout=30)

    async def run() -> list[object]:
        keys = [store.next_key() for _ in range(6)]

        async def answer() -> None:
            await asyncio.sleep(0)  # every request is registered and waiting by now
            for index in order:
                if index not in unanswered:
                    assert store.resolve(keys[index], f"answer {index}")
            assert not store.resolve("no such key", "x")
            store.fail_all()  # the rest would never be answered: the link goes

        requests = [store.request(key, "act", answer if i == 0 else _sent) for i, key in enumerate(keys)]
        return await asyncio.gather(*requests, return_exceptions=True)

    results = loop.run_until_complete(run())
    for index, result in enumerate(results):
        if index in unanswered:
            assert isinstance(result, NotConnectedError)
        else:
            assert result == f"answer {index}"
    assert len(store) == 0 and not store.resolve("1", "late")  # nothing left pending, a late answer is ignored


def test_echo_store_times_out_and_forgets_the_key(loop: asyncio.AbstractEventLoop) -> None:
    store = EchoStore("peer", timeout=0.01)
    key = store.next_key()
    with pytest.raises(ActionFailedError, match="timeout"):
        loop.run_until_complete(store.request(key, "act", _sent))
    assert len(store) == 0 and not store.resolve(key, "late")


async def _sent() -> None:
    return None


def test_echo_store_fails_every_pending_request_when_the_link_goes(loop: asyncio.AbstractEventLoop) -> None:
    store = EchoStore("mirai-api-http", timeout=5)

    async def run() -> list[object]:
        requests = [asyncio.ensure_future(store.request(store.next_key(), "act", _sent)) for _ in range(3)]
        await asyncio.sleep(0)
        store.fail_all()
        return await asyncio.gather(*requests, return_exceptions=True)

    results = loop.run_until_complete(run())
    assert all(isinstance(result, NotConnectedError) for result in results) and len(store) == 0


def test_echo_store_send_failure_is_not_connected(loop: asyncio.AbstractEventLoop) -> None:
    store = EchoStore("peer", timeout=5)

    async def broken() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(NotConnectedError):
        loop.run_until_complete(store.request(store.next_key(), "act", broken))
    assert len(store) == 0
