"""Tests for the Milky segment codec against samples shaped like the Milky IR (1.2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.milky.codec import decode_forwarded, decode_segments, encode_segments, message_segments
from core.message import (
    At,
    AtAll,
    Card,
    Dice,
    Face,
    File,
    Forward,
    ForwardNode,
    Image,
    Markdown,
    MarketFace,
    Message,
    Music,
    Poke,
    Quote,
    Raw,
    Rps,
    Segment,
    Text,
    Video,
    Voice,
)

SAMPLES = Path(__file__).parent / "samples" / "milky"
WIRE: dict[str, dict[str, Any]] = {
    case["name"]: case["wire"] for case in json.loads((SAMPLES / "segments.json").read_text("utf-8"))
}


def _data(name: str) -> dict[str, Any]:
    return WIRE[name]["data"]


def _expected() -> dict[str, Segment]:
    return {
        "text": Text("你好，世界 [ok] & 再见"),
        "mention": At("1234567890", "Alice"),
        "mention_all": AtAll(),
        "face": Face("14"),
        "face_large": Face("339", big=True),
        "reply": Quote("23333", sender_id="1122334455", origin=(Text("原来的话"), Face("178"))),
        "image": Image(
            id=_data("image")["resource_id"], url=_data("image")["temp_url"], width=1080, height=1920, emoji=False
        ),
        "image_sticker": Image(
            id=_data("image_sticker")["resource_id"],
            url=_data("image_sticker")["temp_url"],
            width=240,
            height=240,
            emoji=True,
        ),
        "record": Voice(id=_data("record")["resource_id"], url=_data("record")["temp_url"], length=7),
        "video": Video(id=_data("video")["resource_id"], url=_data("video")["temp_url"]),
        "file": File(id="/a1b2c3d4-e5f6-7890-abcd-ef0123456789", name="报告.pdf", size=1048576),
        "forward": Forward(
            id="4SzfGHnBn4sBHN2xG6ZCQi9LrqhCBhbbXsStNR5Y8Dh0fN0J",
            title="群聊的聊天记录",
            preview=("Alice: 早", "Bob: [图片]"),
            summary="查看2条转发消息",
        ),
        "market_face": MarketFace("e1b2c3d4f5a60718293a4b5c6d7e8f90", "[开心]", _data("market_face")["url"]),
        "light_app": Card("json", _data("light_app")["json_payload"]),
        "xml": Card("xml", _data("xml")["xml_payload"]),
        "unknown": Raw("milky", "rich_poke", {"kind": 3, "label": "放大招"}),
    }


# --- decoding ------------------------------------------------------------------------------------


def test_samples_cover_every_incoming_segment_type() -> None:
    assert set(WIRE) == set(_expected())
    incoming = {"text", "mention", "mention_all", "face", "reply", "image", "record", "video", "file", "forward"}
    incoming |= {"market_face", "light_app", "xml"}
    assert incoming <= {wire["type"] for wire in WIRE.values()}


@pytest.mark.parametrize("name", sorted(WIRE))
def test_segment_decodes_to_the_model(name: str) -> None:
    assert decode_segments([WIRE[name]]) == (_expected()[name],)


def test_whole_list_decodes_in_order() -> None:
    names = sorted(WIRE)
    assert decode_segments([WIRE[n] for n in names]) == tuple(_expected()[n] for n in names)


def test_numbers_given_as_strings_and_missing_optionals_are_tolerated() -> None:
    wire = [
        {"type": "mention", "data": {"user_id": "42"}},
        {"type": "reply", "data": {"message_seq": "7"}},
        {"type": "image", "data": {"resource_id": "r", "temp_url": "u", "width": "10", "height": None}},
        {"type": "record", "data": {"resource_id": "r", "duration": "x"}},
        {"type": "face", "data": {"face_id": 5, "is_large": "false"}},
        {"type": "forward", "data": {"forward_id": "f", "preview": ["a", 3, None, "b"]}},
    ]
    assert decode_segments(wire) == (
        At("42"),
        Quote("7"),
        Image(id="r", url="u", width=10),
        Voice(id="r"),
        Face("5"),
        Forward(id="f", preview=("a", "b")),
    )


def test_segments_key_and_the_older_message_key() -> None:
    segments = [{"type": "text", "data": {"text": "新"}}]
    legacy = [{"type": "text", "data": {"text": "旧"}}]
    assert message_segments({"segments": segments}) is segments
    assert message_segments({"message": legacy}) is legacy
    assert message_segments({"segments": segments, "message": legacy}) is segments
    # a non-list `segments` does not hide a usable draft-era `message` list
    assert message_segments({"segments": None, "message": legacy}) is legacy
    assert message_segments({}) == []
    assert decode_segments(message_segments({"message": legacy})) == (Text("旧"),)


def test_message_segments_of_garbage_is_empty() -> None:
    assert message_segments(None) == []  # type: ignore[arg-type]
    assert decode_segments(message_segments({"segments": "oops"})) == ()


# --- garbage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "decoded"),
    [
        (None, ()),
        (5, ()),
        ("text", ()),
        ([], ()),
        ({"type": "text", "data": {"text": "lone"}}, (Text("lone"),)),
        ([1, None], (Raw("milky", "", {"value": "1"}), Raw("milky", "", {"value": "None"}))),
        ([{"type": 5}], (Raw("milky", "", {"value": "{'type': 5}"}),)),
        ([{"type": "text", "data": "x"}], (Raw("milky", "text", {"value": "x"}),)),
        ([{"type": "text"}], (Text(""),)),
        ([{"type": "text", "data": {"text": ["x"]}}], (Raw("milky", "text", {"text": ["x"]}),)),
        ([{"type": "mention", "data": {"user_id": "abc"}}], (Raw("milky", "mention", {"user_id": "abc"}),)),
        ([{"type": "mention", "data": {}}], (Raw("milky", "mention", {}),)),
        ([{"type": "face", "data": {}}], (Raw("milky", "face", {}),)),
        ([{"type": "reply", "data": {"message_seq": None}}], (Raw("milky", "reply", {"message_seq": None}),)),
        ([{"type": "reply", "data": {"message_seq": 1, "segments": "x"}}], (Quote("1"),)),
        (
            [{"type": "reply", "data": {"message_seq": 1, "segments": [7]}}],
            (Quote("1", origin=(Raw("milky", "", {"value": "7"}),)),),
        ),
        ([{"type": "image", "data": {"resource_id": {"x": 1}}}], (Raw("milky", "image", {"resource_id": {"x": 1}}),)),
        ([{"type": "forward", "data": {"title": "t"}}], (Raw("milky", "forward", {"title": "t"}),)),
        ([{"type": "light_app", "data": {"json_payload": ""}}], (Raw("milky", "light_app", {"json_payload": ""}),)),
        ([{"type": "xml", "data": {"xml_payload": 3.5}}], (Raw("milky", "xml", {"xml_payload": 3.5}),)),
        ([{"type": "mention", "data": {"user_id": True}}], (Raw("milky", "mention", {"user_id": True}),)),
    ],
)
def test_garbage_does_not_raise(garbage: object, decoded: Message) -> None:
    assert decode_segments(garbage) == decoded


def test_hostile_reply_nesting_is_cut_off() -> None:
    segments: Any = [{"type": "text", "data": {"text": "bottom"}}]
    for seq in range(200):
        segments = [{"type": "reply", "data": {"message_seq": seq, "segments": segments}}]
    (seg,) = decode_segments(segments)
    depth = 0
    while isinstance(seg, Quote) and seg.origin:
        seg = seg.origin[0]
        depth += 1
    # The quotes survive to the depth limit; the deepest keeps its seq so it could still be fetched.
    assert depth == 15
    assert isinstance(seg, Quote) and seg.origin == ()


def test_garbage_cannot_be_encoded_to_anything() -> None:
    assert encode_segments((Raw("milky", "", {"value": "1"}), Raw("onebot", "share", {"url": "x"}))) == []


# --- encoding ------------------------------------------------------------------------------------


def test_reply_is_encoded_first_and_only_once() -> None:
    message = (Text("看这个"), At("123"), Quote("42", origin=(Text("原文"),)), Quote("43"))
    assert encode_segments(message) == [
        {"type": "reply", "data": {"message_seq": 42}},
        {"type": "text", "data": {"text": "看这个"}},
        {"type": "mention", "data": {"user_id": 123}},
    ]


def test_quote_without_a_numeric_seq_is_skipped() -> None:
    assert encode_segments((Quote("abc-def"), Quote("9"), Text("x"))) == [
        {"type": "reply", "data": {"message_seq": 9}},
        {"type": "text", "data": {"text": "x"}},
    ]


def test_basic_segments_encode_to_the_outgoing_form() -> None:
    message = (Text("hi"), Text(""), AtAll(), Face("14"), Face("339", big=True), Markdown("**md**"), Markdown(""))
    assert encode_segments(message) == [
        {"type": "text", "data": {"text": "hi"}},
        {"type": "mention_all", "data": {}},
        {"type": "face", "data": {"face_id": "14", "is_large": False}},
        {"type": "face", "data": {"face_id": "339", "is_large": True}},
        {"type": "text", "data": {"text": "**md**"}},
    ]


@pytest.mark.parametrize(
    ("image", "uri"),
    [
        (Image(id="res", url="https://x/y.png", path="/tmp/a.png", base64="QUJD"), "https://x/y.png"),
        (Image(id="res", path="/tmp/pics/a 图.png", base64="QUJD"), "file:///tmp/pics/a 图.png"),
        (Image(path="file:///already/uri.png"), "file:///already/uri.png"),
        (Image(id="res", base64="QUJD"), "base64://QUJD"),
        (Image(base64="base64://QUJD"), "base64://QUJD"),
        (Image(base64="data:image/png;base64,QUJD"), "base64://QUJD"),
    ],
)
def test_image_uri_rules(image: Image, uri: str) -> None:
    assert encode_segments((image,)) == [{"type": "image", "data": {"uri": uri, "sub_type": "normal"}}]


def test_sticker_image_is_sent_as_a_sticker() -> None:
    (sent,) = encode_segments((Image(url="https://x/s.gif", emoji=True),))
    assert sent == {"type": "image", "data": {"uri": "https://x/s.gif", "sub_type": "sticker"}}


def test_relative_image_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (sent,) = encode_segments((Image(path="out/a.png"),))
    assert sent["data"]["uri"] == "file://" + (tmp_path / "out" / "a.png").as_posix()


def test_media_with_only_a_resource_id_is_dropped() -> None:
    # Milky has no way to send a resource_id back; only a uri can be sent.
    assert encode_segments((Image(id="res"), Voice(id="res"), Video(id="res"), Text("x"))) == [
        {"type": "text", "data": {"text": "x"}}
    ]


def test_voice_and_video_use_the_same_uri_rules() -> None:
    assert encode_segments((Voice(path="/tmp/v.amr"), Voice(base64="QUJD"), Video(url="https://v/1.mp4"))) == [
        {"type": "record", "data": {"uri": "file:///tmp/v.amr"}},
        {"type": "record", "data": {"uri": "base64://QUJD"}},
        {"type": "video", "data": {"uri": "https://v/1.mp4"}},
    ]


def test_decoded_media_is_resent_by_its_temp_url() -> None:
    decoded = decode_segments([WIRE["image_sticker"], WIRE["record"], WIRE["video"]])
    assert encode_segments(decoded) == [
        {"type": "image", "data": {"uri": _data("image_sticker")["temp_url"], "sub_type": "sticker"}},
        {"type": "record", "data": {"uri": _data("record")["temp_url"]}},
        {"type": "video", "data": {"uri": _data("video")["temp_url"]}},
    ]


def test_cards_and_segments_from_other_protocols_encode_sensibly() -> None:
    message = (
        Card("json", '{"app":"x"}'),
        Card("app", '{"app":"y"}'),
        Card("xml", "<msg/>"),
        MarketFace("1", "[开心]"),
        MarketFace("2"),
        At("not-a-qq", "Alice"),
        At("", ""),
        Face("", "微笑"),
        File("f", "a.txt"),
        Poke(),
        Dice(3),
        Rps(1),
        Music(title="t"),
        Raw("milky", "rich_poke", {"kind": 3}),
    )
    assert encode_segments(message) == [
        {"type": "light_app", "data": {"json_payload": '{"app":"x"}'}},
        {"type": "light_app", "data": {"json_payload": '{"app":"y"}'}},
        {"type": "text", "data": {"text": "[开心]"}},
        {"type": "text", "data": {"text": "[表情]"}},
        {"type": "text", "data": {"text": "@Alice"}},
        {"type": "text", "data": {"text": "[表情:微笑]"}},
        {"type": "rich_poke", "data": {"kind": 3}},
    ]


def test_unknown_segment_round_trips_through_raw() -> None:
    data = {"kind": 3}
    decoded = decode_segments([{"type": "rich_poke", "data": data}])
    data["kind"] = 4  # the Raw keeps its own copy
    assert encode_segments(decoded) == [{"type": "rich_poke", "data": {"kind": 3}}]


def test_forward_with_nodes_encodes_inline_messages() -> None:
    forward = Forward(
        nodes=(
            ForwardNode("1234567890", "Alice", (Text("早"), Image(url="https://x/a.png"))),
            ForwardNode("", "", (Quote("5"), Text("无名"))),
            ForwardNode(message_id="99"),  # by reference only: Milky cannot rebuild it
        ),
        title="聊天记录",
        preview=("Alice: 早", "", "b", "c", "d", "e"),
        summary="查看2条转发消息",
    )
    assert encode_segments((forward,)) == [
        {
            "type": "forward",
            "data": {
                "messages": [
                    {
                        "user_id": 1234567890,
                        "sender_name": "Alice",
                        "segments": [
                            {"type": "text", "data": {"text": "早"}},
                            {"type": "image", "data": {"uri": "https://x/a.png", "sub_type": "normal"}},
                        ],
                    },
                    {
                        "user_id": 0,
                        "sender_name": "0",
                        "segments": [
                            {"type": "reply", "data": {"message_seq": 5}},
                            {"type": "text", "data": {"text": "无名"}},
                        ],
                    },
                ],
                "title": "聊天记录",
                "preview": ["Alice: 早", "b", "c", "d"],
                "summary": "查看2条转发消息",
            },
        }
    ]


def test_forward_optional_fields_are_left_out_and_id_only_forward_is_dropped() -> None:
    forward = Forward(nodes=(ForwardNode("1", "A", (Text("x"),)),))
    assert encode_segments((forward, Forward(id="abc"))) == [
        {
            "type": "forward",
            "data": {
                "messages": [{"user_id": 1, "sender_name": "A", "segments": [{"type": "text", "data": {"text": "x"}}]}]
            },
        }
    ]


# --- get_forwarded_messages ----------------------------------------------------------------------


def test_decode_forwarded() -> None:
    answer = {
        "messages": [
            {
                "message_seq": 101,
                "sender_name": "Alice",
                "avatar_url": "https://q1.qlogo.cn/g?b=qq&nk=1234567890&s=640",
                "time": 1750000000,
                "segments": [{"type": "text", "data": {"text": "早"}}],
            },
            {
                "sender_name": "Bob",
                "avatar_url": "https://q.qlogo.cn/headimg_dl?dst_uin=1122334455&spec=640",
                "time": 1750000060,
                "message": [WIRE["forward"]],  # the draft-era key, a nested forward by id
            },
            "garbage",
            {"sender_name": "Carol", "avatar_url": 5, "time": "x", "segments": None},
        ]
    }
    assert decode_forwarded(answer) == (
        ForwardNode("1234567890", "Alice", (Text("早"),), 1750000000, "101"),
        ForwardNode("1122334455", "Bob", (_expected()["forward"],), 1750000060, ""),
        ForwardNode("", "Carol", (), 0, ""),
    )


@pytest.mark.parametrize("garbage", [None, 5, "x", {}, {"messages": "x"}, {"messages": [1, None]}])
def test_decode_forwarded_garbage_does_not_raise(garbage: object) -> None:
    assert decode_forwarded(garbage) == ()


def test_decode_forwarded_reads_a_bare_list() -> None:
    nodes = [{"sender_name": "A", "segments": [{"type": "text", "data": {"text": "x"}}]}]
    assert decode_forwarded(nodes) == (ForwardNode(sender_name="A", message=(Text("x"),)),)
