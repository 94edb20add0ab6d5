"""Tests for the OneBot 11 segment / CQ string codec against recorded NapCat and LLOneBot samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.onebot.codec import (
    decode_forward_result,
    decode_message,
    encode_cq,
    encode_forward_nodes,
    encode_message,
    parse_cq,
)
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

SAMPLES = Path(__file__).parent / "samples" / "onebot"
WIRE: dict[str, dict[str, Any]] = {
    case["name"]: case["wire"] for case in json.loads((SAMPLES / "segments.json").read_text("utf-8"))
}
EVENTS: dict[str, dict[str, Any]] = json.loads((SAMPLES / "events.json").read_text("utf-8"))


def _data(name: str) -> dict[str, Any]:
    return WIRE[name]["data"]


def _expected() -> dict[str, Segment]:
    return {
        "text": Text("你好，世界 [ok] & 再见"),
        "face_napcat": Face("14", "微笑", big=False),
        "face_super_llonebot": Face("339", "", big=True),
        "image_napcat": Image(id="0A1B2C3D4E5F60718293A4B5C6D7E8F9.jpg", url=_data("image_napcat")["url"], size=204800),
        "image_sticker_llonebot": Image(
            id="{A7B1C2D3-0000-1111-2222-333344445555}.gif",
            url=_data("image_sticker_llonebot")["url"],
            emoji=True,
            size=51234,
        ),
        "image_flash": Image(id="F1A2B3C4D5E6.image", url=_data("image_flash")["url"], flash=True),
        "record": Voice(id="6f2e1d0c9b8a.amr", url=_data("record")["url"]),
        "video": Video(id="8a9b0c1d2e3f.mp4", url=_data("video")["url"], size=1048576),
        "at_napcat": At("2976543210"),
        "at_named_llonebot": At("1234567890", "Alice"),
        "at_all": AtAll(),
        "reply": Quote("1875432109"),
        "forward_by_id": Forward(id="7381234567890123456"),
        "forward_inline_napcat": Forward(
            id="7381234567890123457",
            nodes=(
                ForwardNode("1234567890", "Alice", (Text("早"),), 1700000000, "1001"),
                ForwardNode("1122334455", "Bob", (Face("14"),), 1700000060, "1002"),
            ),
        ),
        "json": Card("json", _data("json")["data"]),
        "xml": Card("xml", _data("xml")["data"]),
        "poke": Poke("宝贝球", "2011"),
        "dice_napcat": Dice(4),
        "rps_llonebot": Rps(2),
        "file_napcat": File(
            id="/a7b6c5d4-1234-5678-9abc-def012345678", name="报告.pdf", size=1048576, url=_data("file_napcat")["url"]
        ),
        "markdown": Markdown("# 标题\n**粗体**"),
        "mface": MarketFace("9a3f0e1d2c3b4a5968778695a4b3c2d1", "[摸摸头]", _data("mface")["url"]),
        "music_custom": Music(
            kind="custom",
            title="晴天",
            summary="周杰伦",
            jump_url="https://y.music.163.com/m/song?id=186016",
            picture_url="https://p1.music.126.net/cover.jpg",
            music_url="https://music.163.com/song/media/outer/url?id=186016",
        ),
        # Kept Raw on purpose: the model has no field for a platform song id.
        "music_by_id": Raw("onebot", "music", {"type": "163", "id": "28949129"}),
        "share": Raw("onebot", "share", _data("share")),
        "contact": Raw("onebot", "contact", {"type": "qq", "id": "10001"}),
        "location": Raw("onebot", "location", _data("location")),
        "shake_llonebot": Raw("onebot", "shake", {}),
    }


EXPECTED = _expected()

# Segments that go back out exactly as they came in.
SENT_AS_RECEIVED = {"text", "at_napcat", "at_all", "reply", "json", "xml", "music_by_id", "share", "contact"}
SENT_AS_RECEIVED |= {"location", "shake_llonebot"}


def _sent() -> dict[str, list[dict[str, Any]]]:
    sent: dict[str, list[dict[str, Any]]] = {name: [WIRE[name]] for name in SENT_AS_RECEIVED}
    sent |= {
        "face_napcat": [{"type": "face", "data": {"id": "14"}}],
        "face_super_llonebot": [{"type": "face", "data": {"id": "339"}}],
        # The URL wins over the received file name: it is the one form every implementation can fetch.
        "image_napcat": [{"type": "image", "data": {"file": _data("image_napcat")["url"]}}],
        "image_sticker_llonebot": [{"type": "image", "data": {"file": _data("image_sticker_llonebot")["url"]}}],
        "image_flash": [{"type": "image", "data": {"file": _data("image_flash")["url"], "type": "flash"}}],
        "record": [{"type": "record", "data": {"file": _data("record")["url"]}}],
        "video": [{"type": "video", "data": {"file": _data("video")["url"]}}],
        "at_named_llonebot": [{"type": "at", "data": {"qq": "1234567890"}}],
        "forward_by_id": [{"type": "text", "data": {"text": "[聊天记录]"}}],
        "forward_inline_napcat": [{"type": "text", "data": {"text": "[聊天记录]"}}],
        "poke": [{"type": "poke", "data": {"type": "126", "id": "2011"}}],
        "dice_napcat": [{"type": "dice", "data": {}}],
        "rps_llonebot": [{"type": "rps", "data": {}}],
        "file_napcat": [],
        "markdown": [{"type": "text", "data": {"text": "# 标题\n**粗体**"}}],
        "mface": [{"type": "text", "data": {"text": "[摸摸头]"}}],
        "music_custom": [{"type": "music", "data": _data("music_custom")}],
    }
    return sent


SENT = _sent()


def test_samples_and_expectations_cover_the_same_segments() -> None:
    assert set(EXPECTED) == set(WIRE)
    assert set(SENT) == set(WIRE)


@pytest.mark.parametrize("name", sorted(WIRE))
def test_segment_decodes_to_the_model(name: str) -> None:
    assert decode_message([WIRE[name]]) == (EXPECTED[name],)


@pytest.mark.parametrize("name", sorted(WIRE))
def test_single_segment_object_decodes_like_a_one_item_array(name: str) -> None:
    assert decode_message(WIRE[name]) == (EXPECTED[name],)


@pytest.mark.parametrize("name", sorted(WIRE))
def test_decoded_segment_encodes_to_the_sendable_form(name: str) -> None:
    assert encode_message(decode_message([WIRE[name]])) == SENT[name]


def test_whole_array_decodes_in_order() -> None:
    names = ["reply", "at_named_llonebot", "text", "face_napcat", "image_napcat"]
    assert decode_message([WIRE[n] for n in names]) == tuple(EXPECTED[n] for n in names)


def test_numbers_where_strings_are_expected_are_tolerated() -> None:
    message = [
        {"type": "at", "data": {"qq": 1234567890}},
        {"type": "face", "data": {"id": 14}},
        {"type": "reply", "data": {"id": -20117}},
        {"type": "dice", "data": {"result": 6}},
        {"type": "image", "data": {"file": "a.jpg", "file_size": 99, "sub_type": "1"}},
    ]
    assert decode_message(message) == (
        At("1234567890"),
        Face("14"),
        Quote("-20117"),
        Dice(6),
        Image(id="a.jpg", emoji=True, size=99),
    )


def test_json_card_given_as_an_object_is_serialised() -> None:
    (card,) = decode_message([{"type": "json", "data": {"data": {"app": "com.tencent.miniapp", "prompt": "[分享]"}}}])
    assert isinstance(card, Card)
    assert card.kind == "json"
    assert json.loads(card.content) == {"app": "com.tencent.miniapp", "prompt": "[分享]"}


def test_older_llonebot_markdown_spelling() -> None:
    assert decode_message([{"type": "markdown", "data": {"data": "**hi**"}}]) == (Markdown("**hi**"),)


def test_poke_without_a_name_uses_its_type_and_round_trips() -> None:
    (poke,) = decode_message([{"type": "poke", "data": {"type": "1", "id": "-1"}}])
    assert poke == Poke("1", "-1")
    assert encode_message((poke,)) == [{"type": "poke", "data": {"type": "1", "id": "-1"}}]


@pytest.mark.parametrize(
    ("poke", "sent"),
    [
        (Poke(), {"type": "1", "id": "-1"}),  # mirai-api-http's default name
        (Poke("SixSixSix"), {"type": "5", "id": "-1"}),  # as the mirai codec decodes it
        (Poke("敲门"), {"type": "126", "id": "2002"}),
        (Poke("一种新戳法", "2099"), {"type": "126", "id": "2099"}),
        (Poke("一种新戳法"), {"type": "1", "id": "-1"}),
    ],
)
def test_poke_names_from_any_protocol_encode_to_type_and_id(poke: Poke, sent: dict[str, str]) -> None:
    assert encode_message((poke,)) == [{"type": "poke", "data": sent}]


# --- CQ strings ----------------------------------------------------------------------------------


def test_cq_string_decodes_like_its_array() -> None:
    decoded = decode_message("hi[CQ:at,qq=123] there[CQ:face,id=14]")
    assert decoded == (Text("hi"), At("123"), Text(" there"), Face("14"))


def test_parse_cq_unescapes_text_and_params() -> None:
    text = "1&amp;2 &#91;x&#93;[CQ:image,file=a&#44;b=c&#91;&#93;,url=https://h/p?a=1&amp;b=2]&amp;#91;"
    assert parse_cq(text) == [
        {"type": "text", "data": {"text": "1&2 [x]"}},
        {"type": "image", "data": {"file": "a,b=c[]", "url": "https://h/p?a=1&b=2"}},
        # `&amp;` is undone last, so an escaped escape stays literal.
        {"type": "text", "data": {"text": "&#91;"}},
    ]


def test_encode_cq_escapes_text_and_params() -> None:
    segments = [
        {"type": "text", "data": {"text": "a&b[c],d"}},
        {"type": "image", "data": {"file": "x,y=z[]&"}},
    ]
    assert encode_cq(segments) == "a&amp;b&#91;c&#93;,d[CQ:image,file=x&#44;y=z&#91;&#93;&amp;]"


ROUND_TRIP_CASES: list[list[dict[str, Any]]] = [
    [{"type": "text", "data": {"text": "a & b [c] d,e = f"}}],
    [{"type": "text", "data": {"text": "&amp; &#91; &#93; &#44; literally"}}],
    [{"type": "image", "data": {"file": "a,b", "url": "https://x/y?k=v&k2=[v2]"}}],
    [{"type": "json", "data": {"data": '{"a":[1,2],"b":"x=y,z"}'}}],
    [{"type": "at", "data": {"qq": "all"}}, {"type": "text", "data": {"text": " 全体注意 🎉"}}],
    [{"type": "reply", "data": {"id": "-1"}}, {"type": "dice", "data": {}}, {"type": "text", "data": {"text": "骰"}}],
    [{"type": "xml", "data": {"data": '<msg a="1,2">[&]</msg>'}}],
    [{"type": "share", "data": {"url": "https://例子.测试/路径?q=值", "title": "标题=题"}}],
]


@pytest.mark.parametrize("segments", ROUND_TRIP_CASES)
def test_cq_round_trip(segments: list[dict[str, Any]]) -> None:
    assert parse_cq(encode_cq(segments)) == segments


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("hi [CQ:face,id=14", [{"type": "text", "data": {"text": "hi [CQ:face,id=14"}}]),
        ("[CQ:", [{"type": "text", "data": {"text": "[CQ:"}}]),
        ("a[CQ:]b", [{"type": "text", "data": {"text": "a[CQ:]b"}}]),
        ("[CQ:,qq=1]", [{"type": "text", "data": {"text": "[CQ:,qq=1]"}}]),
        ("[CQ:dice]", [{"type": "dice", "data": {}}]),
        ("[CQ:rps,]", [{"type": "rps", "data": {}}]),
        ("[CQ:at,qq]", [{"type": "at", "data": {"qq": ""}}]),
        ("[CQ:share,url=a=b==c]", [{"type": "share", "data": {"url": "a=b==c"}}]),
        ("", []),
    ],
)
def test_malformed_cq_strings_do_not_raise(text: str, parsed: list[dict[str, Any]]) -> None:
    assert parse_cq(text) == parsed
    decode_message(text)  # must not raise either


def test_malformed_cq_at_decodes_to_raw_not_a_crash() -> None:
    assert decode_message("[CQ:at,qq]") == (Raw("onebot", "at", {"qq": ""}),)


# --- garbage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "decoded"),
    [
        (None, ()),
        (5, ()),
        ([], ()),
        ([1, None], (Raw("onebot", "", {"value": "1"}), Raw("onebot", "", {"value": "None"}))),
        ({"type": 5}, (Raw("onebot", "", {"value": "{'type': 5}"}),)),
        ({"type": "text", "data": "x"}, (Raw("onebot", "text", {"value": "x"}),)),
        ({"type": "text"}, (Text(""),)),
        ({"type": "at", "data": {"qq": "abc"}}, (Raw("onebot", "at", {"qq": "abc"}),)),
        ({"type": "face", "data": {}}, (Raw("onebot", "face", {}),)),
        ({"type": "reply", "data": {"id": None}}, (Raw("onebot", "reply", {"id": None}),)),
        ({"type": "text", "data": {"text": ["x"]}}, (Raw("onebot", "text", {"text": ["x"]}),)),
        ({"type": "json", "data": {"data": 7}}, (Raw("onebot", "json", {"data": 7}),)),
        ({"type": "forward", "data": {"id": "9", "content": "oops"}}, (Forward(id="9"),)),
        ({"type": "forward", "data": {"id": "9", "content": [1, {"x": 1}]}}, (Forward(id="9"),)),
        ({"type": "node", "data": {"id": "1"}}, (Raw("onebot", "node", {"id": "1"}),)),
    ],
)
def test_garbage_does_not_raise(garbage: object, decoded: Message) -> None:
    assert decode_message(garbage) == decoded


def test_hostile_forward_nesting_is_cut_off() -> None:
    message: Any = [{"type": "text", "data": {"text": "bottom"}}]
    for _ in range(200):
        message = [{"type": "forward", "data": {"id": "1", "content": [{"sender": {}, "message": message}]}}]
    (seg,) = decode_message(message)
    depth = 0
    while isinstance(seg, Forward) and seg.nodes:
        seg = seg.nodes[0].message[0]
        depth += 1
    # Nodes stop at the depth limit; the forward there keeps its id so it could still be fetched.
    assert depth == 16
    assert seg == Forward(id="1")


def test_garbage_cannot_be_encoded_to_anything() -> None:
    assert encode_message((Raw("onebot", "", {"value": "1"}), Raw("mirai", "MiraiCode", {"code": "x"}))) == []


# --- encoding ------------------------------------------------------------------------------------


def test_reply_is_encoded_first_and_only_once() -> None:
    message = (Text("看这个"), At("123"), Quote("42", origin=(Text("原文"),)), Quote("43"))
    assert encode_message(message) == [
        {"type": "reply", "data": {"id": "42"}},
        {"type": "text", "data": {"text": "看这个"}},
        {"type": "at", "data": {"qq": "123"}},
    ]


@pytest.mark.parametrize(
    ("image", "file"),
    [
        (Image(id="abc.jpg", url="https://x/y.png", path="/tmp/a.png", base64="QUJD"), "https://x/y.png"),
        (Image(id="abc.jpg", path="/tmp/pics/a 图.png", base64="QUJD"), "file:///tmp/pics/a 图.png"),
        (Image(path="file:///already/uri.png"), "file:///already/uri.png"),
        (Image(id="abc.jpg", base64="QUJD"), "base64://QUJD"),
        (Image(base64="base64://QUJD"), "base64://QUJD"),
        (Image(base64="data:image/png;base64,QUJD"), "base64://QUJD"),
        (Image(id="abc.jpg"), "abc.jpg"),
    ],
)
def test_image_file_rules(image: Image, file: str) -> None:
    assert encode_message((image,)) == [{"type": "image", "data": {"file": file}}]


def test_relative_image_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (sent,) = encode_message((Image(path="out/a.png"),))
    assert sent["data"]["file"] == "file://" + (tmp_path / "out" / "a.png").as_posix()


def test_image_without_any_source_is_dropped() -> None:
    assert encode_message((Image(), Voice(), Video(), Text("x"))) == [{"type": "text", "data": {"text": "x"}}]


def test_voice_and_video_use_the_same_file_rules() -> None:
    assert encode_message((Voice(path="/tmp/v.amr"), Voice(base64="QUJD"), Video(id="v.mp4"))) == [
        {"type": "record", "data": {"file": "file:///tmp/v.amr"}},
        {"type": "record", "data": {"file": "base64://QUJD"}},
        {"type": "video", "data": {"file": "v.mp4"}},
    ]


def test_segments_from_other_protocols_encode_sensibly() -> None:
    message = (
        Text(""),
        AtAll(),
        Face("", "微笑"),
        Card("app", '{"app":"x"}'),
        Music(kind="NeteaseCloudMusic", title="t", jump_url="https://j", music_url="https://m"),
        MarketFace("1"),
        Markdown(""),
        File("f", "a.txt"),
    )
    assert encode_message(message) == [
        {"type": "at", "data": {"qq": "all"}},
        {"type": "text", "data": {"text": "[表情:微笑]"}},
        {"type": "json", "data": {"data": '{"app":"x"}'}},
        {"type": "music", "data": {"type": "custom", "url": "https://j", "audio": "https://m", "title": "t"}},
        {"type": "text", "data": {"text": "[表情]"}},
    ]


def test_raw_segment_data_is_copied_not_shared() -> None:
    data = {"url": "https://x"}
    (raw,) = decode_message([{"type": "share", "data": data}])
    data["url"] = "changed"
    assert encode_message((raw,)) == [{"type": "share", "data": {"url": "https://x"}}]


# --- forwards ------------------------------------------------------------------------------------


def test_forward_nodes_encode_by_content_and_by_reference() -> None:
    forward = Forward(
        nodes=(
            ForwardNode("10001", "Alice", (Text("早"), Image(url="https://x/a.png"))),
            ForwardNode(message=(Text("我自己"),)),
            ForwardNode(message_id="1875432101"),
            ForwardNode("10002", "Bob", (File("f"),)),  # nothing sendable left: dropped
        )
    )
    assert encode_forward_nodes(forward, "2976543210", "小助手") == [
        {
            "type": "node",
            "data": {
                "user_id": "10001",
                "nickname": "Alice",
                "content": [
                    {"type": "text", "data": {"text": "早"}},
                    {"type": "image", "data": {"file": "https://x/a.png"}},
                ],
            },
        },
        {
            "type": "node",
            "data": {
                "user_id": "2976543210",
                "nickname": "小助手",
                "content": [{"type": "text", "data": {"text": "我自己"}}],
            },
        },
        {"type": "node", "data": {"id": "1875432101"}},
    ]


def test_forward_result_spec_shape_with_all_node_spellings() -> None:
    result = {
        "message": [
            {"type": "node", "data": {"user_id": "10001", "nickname": "Alice", "content": [WIRE["text"]]}},
            # go-cqhttp spelling, content as a CQ string
            {"type": "node", "data": {"uin": 10002, "name": "Bob", "content": "[CQ:face,id=14]好"}},
            {"type": "node", "data": {"id": "1875432101"}},
            {"type": "node", "data": {}},  # nothing to show: skipped
            "garbage",
        ]
    }
    assert decode_forward_result(result) == (
        ForwardNode("10001", "Alice", (EXPECTED["text"],)),
        ForwardNode("10002", "Bob", (Face("14"), Text("好"))),
        ForwardNode(message_id="1875432101"),
    )


def test_forward_result_llonebot_shape() -> None:
    result = {
        "messages": [
            {
                "self_id": 2976543210,
                "user_id": 1234567890,
                "time": 1700000000,
                "message_id": 2001,
                "message_type": "group",
                "sender": {"user_id": 1234567890, "nickname": "Alice", "card": "爱丽丝"},
                "raw_message": "在吗",
                "font": 14,
                "content": [{"type": "text", "data": {"text": "在吗"}}],
                "message_format": "array",
            },
            {
                "time": 1700000005,
                "message_id": 2002,
                "sender": {"user_id": 1122334455, "nickname": "", "card": "Bob"},
                "content": [WIRE["forward_inline_napcat"]],
            },
        ]
    }
    assert decode_forward_result(result) == (
        ForwardNode("1234567890", "Alice", (Text("在吗"),), 1700000000, "2001"),
        ForwardNode("1122334455", "Bob", (EXPECTED["forward_inline_napcat"],), 1700000005, "2002"),
    )


@pytest.mark.parametrize("garbage", [None, 5, "x", {}, {"messages": 3}, {"message": [None]}, [{"sender": 1}]])
def test_forward_result_garbage_gives_no_nodes(garbage: object) -> None:
    assert decode_forward_result(garbage) == ()


def test_forward_node_encoding_round_trips_through_decoding() -> None:
    forward = Forward(nodes=(ForwardNode("10001", "Alice", (Text("hi"), Face("14"))), ForwardNode(message_id="7")))
    nodes = encode_forward_nodes(forward, "1", "bot")
    assert decode_forward_result({"message": nodes}) == forward.nodes


# --- whole events --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("private_friend", (Text("你好 "), Face("14"))),
        ("private_group_temp", (Text("请问怎么入群"),)),
        ("group_reply_at", (Quote("1875432101"), At("2976543210", "小助手"), Text(" 这个呢？"))),
        (
            "group_cq_string",
            (
                At("2976543210"),
                Text(" 1&2 [注意] "),
                Image(id="0A1B.jpg", url="https://multimedia.nt.qq.com.cn/download?appid=1407&fileid=EhQ,x"),
            ),
        ),
        ("message_sent", (Text("好的"),)),
    ],
)
def test_event_messages_decode(event: str, message: Message) -> None:
    assert decode_message(EVENTS[event]["message"]) == message


def test_cq_string_event_matches_its_raw_message() -> None:
    event = EVENTS["group_cq_string"]
    assert event["message_format"] == "string"
    assert decode_message(event["raw_message"]) == decode_message(event["message"])


def test_array_event_raw_message_agrees_with_its_segments() -> None:
    event = EVENTS["group_reply_at"]
    # NapCat's raw_message drops the at's name; everything else must match the array.
    assert decode_message(event["raw_message"]) == (Quote("1875432101"), At("2976543210"), Text(" 这个呢？"))


def test_event_samples_cover_what_the_adapter_handles() -> None:
    kinds = {}
    for name, e in EVENTS.items():
        kind = e.get("message_type") or e.get("notice_type") or e.get("request_type")
        kinds[name] = (e["post_type"], kind, e.get("sub_type"))
    assert kinds == {
        "private_friend": ("message", "private", "friend"),
        "private_group_temp": ("message", "private", "group"),
        "group_reply_at": ("message", "group", "normal"),
        "group_cq_string": ("message", "group", "normal"),
        "message_sent": ("message_sent", "private", "friend"),
        "poke_notice": ("notice", "notify", "poke"),
        "friend_request": ("request", "friend", None),
        "group_invite_request": ("request", "group", "invite"),
        "lifecycle_connect": ("meta_event", None, "connect"),
        "heartbeat": ("meta_event", None, None),
    }
