"""Property tests of the Milky and Satori codecs and event decoders: nothing raises, encodings round-trip."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.link import LinkState
from adapters.milky.adapter import MilkyAdapter
from adapters.milky.codec import decode_forwarded, decode_segments, encode_segments, message_segments
from adapters.milky.settings import MilkySettings
from adapters.satori.adapter import SatoriAdapter
from adapters.satori.codec import decode_content, encode_content, parse_content
from adapters.satori.settings import SatoriSettings
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent
from core.message import At, AtAll, Face, Image, Message, Quote, Segment, Text
from tests.hostile import Sink, json_values, small_json

EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QQ = re.compile(r"[1-9][0-9]{0,18}")


# --- Milky ----------------------------------------------------------------------------------------

MILKY_TYPES = [
    "text", "mention", "mention_all", "face", "reply", "image", "record", "video", "file", "forward",
    "market_face", "light_app", "xml", "rich_poke",
]  # fmt: skip
MILKY_FIELDS = [
    "text", "user_id", "name", "face_id", "is_large", "message_seq", "sender_id", "segments", "resource_id",
    "temp_url", "width", "height", "sub_type", "duration", "file_id", "file_name", "file_size", "forward_id",
    "title", "preview", "summary", "emoji_id", "url", "json_payload", "xml_payload",
]  # fmt: skip
milky_segment = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(MILKY_TYPES), "data": st.dictionaries(st.sampled_from(MILKY_FIELDS), small_json)}
    ),
    # Replies carry the quoted message's segments, which may quote again.
    lambda inner: st.fixed_dictionaries(
        {
            "type": st.just("reply"),
            "data": st.fixed_dictionaries({"message_seq": small_json, "segments": st.lists(inner, max_size=3)}),
        }
    ),
    max_leaves=10,
)


@EXAMPLES
@given(json_values)
def test_milky_decoders_take_any_json(value: Any) -> None:
    assert all(isinstance(seg, Segment) for seg in decode_segments(value))
    decode_forwarded(value)
    decode_forwarded({"messages": value})
    message_segments(value)
    message_segments({"segments": value, "message": value})


@EXAMPLES
@given(st.lists(milky_segment | small_json, max_size=6))
def test_milky_segments_shaped_garbage_keeps_one_segment_each(segments: list[Any]) -> None:
    decoded = decode_segments(segments)
    assert len(decoded) == len(segments) and all(isinstance(seg, Segment) for seg in decoded)


MILKY_EVENTS = [
    "message_receive", "friend_request", "group_invitation", "group_nudge", "friend_nudge", "bot_offline",
    "message_recall", "group_member_increase",
]  # fmt: skip
ids = st.integers(1, 2**62)


@st.composite
def milky_events(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed event of a random kind with a few fields replaced by garbage or left out."""
    data: dict[str, Any] = {
        "message_scene": draw(st.sampled_from(["friend", "group", "temp"])),
        "peer_id": draw(ids),
        "sender_id": draw(ids),
        "message_seq": draw(st.integers(0, 2**62)),
        "time": draw(st.integers(0, 2**32)),
        "segments": draw(st.lists(milky_segment, max_size=3)),
        "group": {"group_id": draw(ids), "group_name": draw(st.text(max_size=5))},
        "group_member": {"card": draw(st.text(max_size=5)), "role": draw(st.sampled_from(["owner", "admin", "x"]))},
        "friend": {"nickname": draw(st.text(max_size=5))},
        "initiator_id": draw(ids),
        "initiator_uid": draw(st.text(min_size=1, max_size=8)),
        "comment": draw(st.text(max_size=8)),
        "group_id": draw(ids),
        "invitation_seq": draw(st.integers(0, 2**40)),
        "receiver_id": draw(st.just(10003) | ids),
        "user_id": draw(ids),
        "is_self_send": draw(st.booleans()),
        "is_self_receive": draw(st.booleans()),
        "reason": draw(st.text(max_size=8)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=3, unique=True)):
        data[key] = draw(small_json)
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2, unique=True)):
        del data[key]
    return {
        "time": 1,
        "self_id": draw(st.just(10003) | small_json),
        "event_type": draw(st.sampled_from(MILKY_EVENTS)),
        "data": data,
    }


garbage_milky_events = st.builds(
    lambda kind, data, self_id: {"time": 1, "self_id": self_id, "event_type": kind, "data": data},
    st.sampled_from(MILKY_EVENTS) | json_values,
    json_values,
    json_values,
)


def _milky(loop: asyncio.AbstractEventLoop) -> tuple[MilkyAdapter, Sink]:
    sink = Sink()
    adapter = MilkyAdapter("milky", MilkySettings(), sink)
    adapter.self_id = "10003"
    return adapter, sink


@EXAMPLES
@given(milky_events() | garbage_milky_events)
def test_milky_events_never_raise_and_only_well_formed_ones_get_through(
    loop: asyncio.AbstractEventLoop, event: dict[str, Any]
) -> None:
    adapter, sink = _milky(loop)
    loop.run_until_complete(adapter.on_event(event))
    for decoded in sink.events:
        assert QQ.fullmatch(decoded.user_id), decoded
        if isinstance(decoded, MessageEvent) and decoded.chat_type is ChatType.GROUP:
            assert QQ.fullmatch(decoded.group_id)
        if isinstance(decoded, RequestEvent) and decoded.kind == "friend":
            assert isinstance(decoded.raw["initiator_uid"], str) and decoded.raw["initiator_uid"].isprintable()
        if isinstance(decoded, NoticeEvent) and decoded.group_id:
            assert QQ.fullmatch(decoded.group_id)


qq_ids = st.integers(1, 2**63 - 1).map(str)
milky_plain = st.one_of(
    st.text(min_size=1).map(Text),
    qq_ids.map(At),
    st.just(AtAll()),
    st.builds(Face, st.integers(0, 10**6).map(str), big=st.booleans()),
)


@EXAMPLES
@given(st.none() | st.integers(0, 2**63 - 1).map(str), st.lists(milky_plain, max_size=6))
def test_milky_encoding_round_trips(quote: str | None, segments: list[Segment]) -> None:
    message: Message = ((Quote(quote),) if quote is not None else ()) + tuple(segments)
    assert decode_segments(encode_segments(message)) == message


# --- Satori ---------------------------------------------------------------------------------------

FRAGMENTS = [
    "<", ">", "&", "&amp;", "&lt;", "&#39;", "&#x27;", "&#0;", "&#99999999;", '"', "'", "/", "=", " ", "\n",
    "<at id=\"1\"/>", '<at type="all"/>', "<quote id=\"2\">", "</quote>", '<author id="3" name="a"/>',
    "<message forward>", "<message>", "</message>", '<message id="9" forward/>', "<p>", "</p>", "<br/>",
    '<img src="https://x/1.png"/>', '<img src="data:image/png;base64,iVBO"/>', "<face id=\"14\"/>",
    "<mface emoji-id=\"e\">", "</mface>", "<llonebot:ark data='{}'/>", "<!--", "-->", "<b>", "</b>",
    '<a href="https://x">', "</a>", "<unknown-tag x=1>", "</unknown-tag>", "text", "文字", "<at", "id=",
]  # fmt: skip
markup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


@EXAMPLES
@given(st.text() | markup)
def test_satori_content_never_raises(content: str) -> None:
    assert all(isinstance(seg, Segment) for seg in decode_content(content))
    parse_content(content)


@EXAMPLES
@given(json_values)
def test_satori_content_of_any_json_never_raises(value: Any) -> None:
    decode_content(value)  # type: ignore[arg-type]
    parse_content(value)  # type: ignore[arg-type]


# Characters a receiver treats as markup or line structure are the encoder's job, so they are all in;
# "\r" is out because Satori has no way to say it at a line boundary ("\r\n" is read as a line break).
printable_text = st.text(st.characters(codec="utf-8", exclude_characters="\r"), min_size=1)
attribute = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=1).filter(
    lambda s: s.strip() == s
)
satori_element = st.one_of(
    st.builds(At, attribute, attribute.filter(lambda s: not s.startswith("@")) | st.just("")),
    st.just(AtAll()),
    st.builds(Face, st.integers(0, 10**6).map(str), big=st.booleans()),
    st.builds(Image, url=st.from_regex(r"https://[a-z]{1,8}/[A-Za-z0-9_.?=&%-]{0,20}", fullmatch=True)),
)


@st.composite
def satori_messages(draw: st.DrawFn) -> Message:
    """Elements with text between them: adjacent text is one Text once decoded, so it is generated as one."""
    parts: list[Segment] = []
    quote = draw(st.none() | attribute)
    if quote is not None:
        parts.append(Quote(quote))
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            parts.append(Text(draw(printable_text)))
        parts.append(draw(satori_element))
    if draw(st.booleans()):
        parts.append(Text(draw(printable_text)))
    return tuple(parts)


@EXAMPLES
@given(satori_messages())
def test_satori_encoding_round_trips(message: Message) -> None:
    assert decode_content(encode_content(message)) == message


SATORI_EVENTS = ["message-created", "message", "friend-request", "guild-request", "message-deleted", "login-added"]
satori_ids = st.text("0123456789abcdefgh:_-", min_size=1, max_size=12)
SATORI_PATHS = [
    ("sn",), ("type",), ("timestamp",), ("login",), ("login", "user"), ("login", "user", "id"), ("user",),
    ("user", "id"), ("user", "name"), ("channel",), ("channel", "id"), ("channel", "type"), ("guild",),
    ("guild", "id"), ("member",), ("member", "nick"), ("message",), ("message", "id"), ("message", "content"),
]  # fmt: skip


@st.composite
def satori_events(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed event of a random kind with a few fields replaced by garbage."""
    user, group = draw(satori_ids), draw(satori_ids)
    private = draw(st.booleans())
    event: dict[str, Any] = {
        "sn": draw(st.integers(0, 2**60)),
        "type": draw(st.sampled_from(SATORI_EVENTS)),
        "timestamp": draw(st.integers(0, 2**45)),
        "login": {"sn": 1, "platform": "llonebot", "user": {"id": draw(st.just("10004") | satori_ids)}},
        "user": {"id": user, "name": draw(st.text(max_size=5))},
        "channel": {"id": f"private:{user}" if private else group, "type": 1 if private else 0},
        "guild": {"id": group},
        "member": {"nick": draw(st.text(max_size=5))},
        "message": {"id": draw(satori_ids), "content": draw(st.text(max_size=20) | markup)},
    }
    for path in draw(st.lists(st.sampled_from(SATORI_PATHS), max_size=2, unique=True)):
        where = event
        for part in path[:-1]:
            where = where[part] if isinstance(where.get(part), dict) else {}
        where[path[-1]] = draw(small_json)
    return event


garbage_satori_events = st.dictionaries(
    st.sampled_from([p[0] for p in SATORI_PATHS] + ["self_id", "platform", "id"]), json_values
)


def _satori(loop: asyncio.AbstractEventLoop) -> tuple[SatoriAdapter, Sink]:
    sink = Sink()
    adapter = SatoriAdapter("satori", SatoriSettings(), sink)
    adapter.self_id, adapter.platform = "10004", "llonebot"
    return adapter, sink


@EXAMPLES
@given(satori_events() | garbage_satori_events)
def test_satori_events_never_raise_and_only_well_formed_ones_get_through(
    loop: asyncio.AbstractEventLoop, event: dict[str, Any]
) -> None:
    adapter, sink = _satori(loop)
    loop.run_until_complete(adapter.on_event(event))
    for decoded in sink.events:
        if isinstance(decoded, MessageEvent):
            assert decoded.user_id.isprintable() and decoded.message_id and decoded.user_id != "10004"
    assert adapter.sn is None or (isinstance(adapter.sn, int) and 0 <= adapter.sn < 2**53)


@EXAMPLES
@given(st.sampled_from([0, 1, 2, 4, 5]) | json_values, json_values | st.fixed_dictionaries({"logins": json_values}))
def test_satori_signals_never_raise_and_ready_always_means_up(
    loop: asyncio.AbstractEventLoop, op: Any, body: Any
) -> None:
    adapter, _ = _satori(loop)
    adapter.self_id = adapter.platform = ""
    loop.run_until_complete(adapter._on_signal({"op": op, "body": body}, adapter.link))
    assert (adapter.link.status.state is LinkState.UP) == (type(op) is int and op == 4)
