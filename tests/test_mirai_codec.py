"""Tests for the mirai-api-http message chain codec against recorded wire samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.mirai.codec import DecodedChain, decode_chain, encode_chain
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

SAMPLES = Path(__file__).parent / "samples" / "mirai"
WIRE: dict[str, dict[str, Any]] = {
    case["name"]: case["wire"] for case in json.loads((SAMPLES / "elements.json").read_text("utf-8"))
}
EVENTS: dict[str, dict[str, Any]] = json.loads((SAMPLES / "events.json").read_text("utf-8"))

SOURCE_CASES = {"source": ("123456", 1700000000), "source_negative_id": ("-1934567810", 1700000123)}


def _expected() -> dict[str, Segment]:
    w = WIRE
    return {
        "quote_group": Quote("123456", "987654321", "123456789", "123456789", (Text("今天吃什么"),)),
        "quote_friend": Quote("-20117", "987654321", "", "1234567890", (Text("在吗"), Face("14", "微笑"))),
        "at": At("1234567890", "@Mirai"),
        "at_all": AtAll(),
        "face_is_super_face": Face("339", "舔屏", big=True),
        "face_super_face_docs_spelling": Face("123", "bu", big=True),
        "face_plain": Face("14", "微笑", big=False),
        "plain": Text("Mirai牛逼"),
        "image": Image(
            id="{01E9451B-70ED-EAE3-B37C-101F1EEBF5B5}.jpg",
            url=w["image"]["url"],
            width=1080,
            height=1920,
            size=204800,
        ),
        "image_emoji": Image(
            id="{A7B1C2D3-0000-1111-2222-333344445555}.gif",
            url=w["image_emoji"]["url"],
            emoji=True,
            width=240,
            height=240,
            size=51234,
        ),
        "flash_image": Image(
            id="{01E9451B-70ED-EAE3-B37C-101F1EEBF5B5}.jpg",
            url=w["flash_image"]["url"],
            flash=True,
            width=720,
            height=1280,
            size=99000,
        ),
        "voice": Voice(id="23C477720A37FEB6A9EE4BCCF654014F.amr", url=w["voice"]["url"], length=1024),
        "xml": Card("xml", w["xml"]["xml"]),
        "json": Card("json", '{"app":"com.tencent.miniapp","prompt":"[分享]"}'),
        "app": Card("app", w["app"]["content"]),
        "poke": Poke("SixSixSix"),
        "dice": Dice(4),
        "market_face": MarketFace("235125", "[摸摸头]"),
        "music_share": Music(
            kind="NeteaseCloudMusic",
            title="晴天",
            summary="周杰伦",
            jump_url="https://y.music.163.com/m/song?id=186016",
            picture_url="https://p1.music.126.net/cover.jpg",
            music_url="https://music.163.com/song/media/outer/url?id=186016",
            brief="[分享]晴天",
        ),
        "forward_by_content": Forward(
            nodes=(
                ForwardNode("10001", "Alice", (Text("早"),), 1700000000),
                ForwardNode(
                    "10002",
                    "Bob",
                    (
                        Image(
                            id="{11111111-2222-3333-4444-555555555555}.png",
                            url="https://gchat.qpic.cn/x/0",
                            width=10,
                            height=10,
                            size=100,
                        ),
                    ),
                    1700000060,
                ),
            ),
            title="群聊的聊天记录",
            brief="[聊天记录]",
            source="聊天记录",
            summary="查看2条转发消息",
            preview=("Alice: 早", "Bob: [图片]"),
        ),
        "forward_received_no_display": Forward(
            nodes=(ForwardNode("10001", "Alice", (Text("hi"),), 1700000000),),
        ),
        "forward_by_message_id": Forward(
            nodes=(ForwardNode(message_id="4321"), ForwardNode(message_id="-77")),
        ),
        "forward_by_message_ref": Forward(nodes=(ForwardNode(message_id="123", ref_target="321987654"),)),
        "file": File("/a7b6c5d4-1234-5678-9abc-def012345678", "报告.pdf", 1048576),
        "short_video": Video(
            id="0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            url=w["short_video"]["videoUrl"],
            name="VID_20231121",
            size=3145728,
            md5="0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            format="mp4",
        ),
        "mirai_code": Raw("mirai", "MiraiCode", {"code": "hello[mirai:at:1234567]"}),
        "unknown": Raw("mirai", "Unknown", {"type": "Unknown"}),
        "future_type": Raw("mirai", "Markdown", {"type": "Markdown", "content": "# hi", "extra": [1, 2]}),
    }


EXPECTED = _expected()

# Elements that go back out exactly as they came in.
SENT_AS_RECEIVED = {"plain", "xml", "json", "app", "poke", "dice", "music_share", "file", "mirai_code"}
SENT_AS_RECEIVED |= {"unknown", "future_type"}


def _sent() -> dict[str, list[dict[str, Any]]]:
    w = WIRE
    sent: dict[str, list[dict[str, Any]]] = {name: [WIRE[name]] for name in SENT_AS_RECEIVED}
    sent |= {
        "quote_group": [],
        "quote_friend": [],
        "at": [{"type": "At", "target": 1234567890}],
        "at_all": [{"type": "AtAll"}],
        "face_is_super_face": [{"type": "Face", "faceId": 339, "isSuperFace": True}],
        "face_super_face_docs_spelling": [{"type": "Face", "faceId": 123, "isSuperFace": True}],
        "face_plain": [{"type": "Face", "faceId": 14, "isSuperFace": False}],
        "image": [{"type": "Image", "imageId": "{01E9451B-70ED-EAE3-B37C-101F1EEBF5B5}.jpg"}],
        "image_emoji": [{"type": "Image", "imageId": "{A7B1C2D3-0000-1111-2222-333344445555}.gif"}],
        "flash_image": [{"type": "FlashImage", "imageId": "{01E9451B-70ED-EAE3-B37C-101F1EEBF5B5}.jpg"}],
        "voice": [{"type": "Voice", "voiceId": "23C477720A37FEB6A9EE4BCCF654014F.amr"}],
        "market_face": [{"type": "Plain", "text": "[摸摸头]"}],
        "forward_by_content": [
            {
                "type": "Forward",
                "display": w["forward_by_content"]["display"],
                "nodeList": [
                    {
                        "senderId": 10001,
                        "time": 1700000000,
                        "senderName": "Alice",
                        "messageChain": [{"type": "Plain", "text": "早"}],
                    },
                    {
                        "senderId": 10002,
                        "time": 1700000060,
                        "senderName": "Bob",
                        "messageChain": [
                            {"type": "Image", "imageId": "{11111111-2222-3333-4444-555555555555}.png"},
                        ],
                    },
                ],
            }
        ],
        "forward_received_no_display": [
            {
                "type": "Forward",
                "display": None,
                "nodeList": [
                    {
                        "senderId": 10001,
                        "time": 1700000000,
                        "senderName": "Alice",
                        "messageChain": [{"type": "Plain", "text": "hi"}],
                    }
                ],
            }
        ],
        "forward_by_message_id": [
            {"type": "Forward", "display": None, "nodeList": [{"messageId": 4321}, {"messageId": -77}]}
        ],
        "forward_by_message_ref": [
            {
                "type": "Forward",
                "display": None,
                "nodeList": [{"messageRef": {"messageId": 123, "target": 321987654}}],
            }
        ],
        "short_video": [
            {
                "type": "ShortVideo",
                "videoId": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                "fileMd5": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                "fileSize": 3145728,
                "fileFormat": "mp4",
                "filename": "VID_20231121",
                "videoUrl": "https://multimedia.nt.qq.com.cn/download?appid=1415&fileid=abc",
            }
        ],
    }
    return sent


SENT = _sent()


def _walk(msg: Message) -> list[Segment]:
    """Every segment, including those inside quotes and forward nodes."""
    out: list[Segment] = []
    for seg in msg:
        out.append(seg)
        if isinstance(seg, Quote):
            out += _walk(seg.origin)
        elif isinstance(seg, Forward):
            for node in seg.nodes:
                out += _walk(node.message)
    return out


def _nested_forward(levels: int) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "Plain", "text": "bottom"}
    for _ in range(levels):
        node = {"senderId": 1, "time": 0, "senderName": "n", "messageChain": [element]}
        element = {"type": "Forward", "display": None, "nodeList": [node]}
    return element


# --- samples and decoding --------------------------------------------------------------------------


def test_every_sample_has_an_expectation() -> None:
    assert set(WIRE) == set(EXPECTED) | set(SOURCE_CASES)
    assert set(SENT) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decode_element(name: str) -> None:
    decoded = decode_chain([WIRE[name]])
    assert decoded.message == (EXPECTED[name],)
    assert (decoded.message_id, decoded.time) == ("", 0)


@pytest.mark.parametrize("name", sorted(SOURCE_CASES))
def test_source_gives_message_id_and_time(name: str) -> None:
    chain = [WIRE[name], {"type": "Plain", "text": "hi"}]
    message_id, time = SOURCE_CASES[name]
    assert decode_chain(chain) == DecodedChain((Text("hi"),), message_id, time)


def test_source_id_as_string_and_bad_source_id() -> None:
    assert decode_chain([{"type": "Source", "id": "77", "time": 5}]) == DecodedChain((), "77", 5)
    assert decode_chain([{"type": "Source", "id": "abc", "time": "x"}, {"type": "AtAll"}]) == DecodedChain(
        (AtAll(),), "", 0
    )


def test_chain_without_source_has_empty_id() -> None:
    assert decode_chain([{"type": "Plain", "text": "x"}]) == DecodedChain((Text("x"),), "", 0)


@pytest.mark.parametrize("name", sorted(n for n, e in EVENTS.items() if "messageChain" in e["data"]))
def test_event_chains_decode_without_raw(name: str) -> None:
    frame = EVENTS[name]
    assert frame["syncId"] == "-1"
    decoded = decode_chain(frame["data"]["messageChain"])
    assert decoded.message_id != ""
    assert decoded.time > 1_600_000_000
    assert decoded.message
    assert not [seg for seg in _walk(decoded.message) if isinstance(seg, Raw)]


def test_group_message_sample_contents() -> None:
    decoded = decode_chain(EVENTS["GroupMessage"]["data"]["messageChain"])
    expected = (At("2976543210", "@小助手"), Text(" 今天天气怎么样"))
    assert decoded == DecodedChain(expected, "48211", 1700000002)
    quoted = decode_chain(EVENTS["GroupMessage_quote"]["data"]["messageChain"]).message[0]
    assert quoted == Quote("48212", "2976543210", "987654321", "987654321", (Text("今天多云转晴，25°C"),))


def test_events_sample_has_every_kind() -> None:
    kinds = {frame["data"]["type"] for frame in EVENTS.values()}
    assert kinds >= {
        "FriendMessage",
        "GroupMessage",
        "TempMessage",
        "StrangerMessage",
        "FriendSyncMessage",
        "GroupSyncMessage",
        "NudgeEvent",
        "NewFriendRequestEvent",
        "BotInvitedJoinGroupRequestEvent",
        "BotOnlineEvent",
    }


# --- encoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SENT))
def test_encode_of_decoded_is_sendable_wire_form(name: str) -> None:
    assert encode_chain(decode_chain([WIRE[name]]).message) == SENT[name]


@pytest.mark.parametrize(
    ("segment", "sent"),
    [
        (Image(id="i", url="u", path="p", base64="b"), {"type": "Image", "imageId": "i"}),
        (Image(url="u", path="p", base64="b"), {"type": "Image", "url": "u"}),
        (Image(path="p", base64="b", width=3), {"type": "Image", "path": "p"}),
        (Image(base64="b", emoji=True), {"type": "Image", "base64": "b"}),
        (Image(url="u", path="p", flash=True), {"type": "FlashImage", "url": "u"}),
        (Voice(id="v", url="u", path="p", base64="b", length=3), {"type": "Voice", "voiceId": "v"}),
        (Voice(url="u", path="p", base64="b"), {"type": "Voice", "url": "u"}),
        (Voice(path="p", base64="b"), {"type": "Voice", "path": "p"}),
        (Voice(base64="b"), {"type": "Voice", "base64": "b"}),
    ],
)
def test_media_sends_exactly_one_source_by_priority(segment: Segment, sent: dict[str, Any]) -> None:
    assert encode_chain((segment,)) == [sent]


def test_media_without_any_source_is_dropped() -> None:
    assert encode_chain((Image(width=5), Voice(length=3), Text("x"))) == [{"type": "Plain", "text": "x"}]


def test_quote_is_not_encoded() -> None:
    msg = (Quote("48212", "1", "2", "2", (Text("old"),)), Text("reply"))
    assert encode_chain(msg) == [{"type": "Plain", "text": "reply"}]


def test_market_face_degrades_to_plain() -> None:
    assert encode_chain((MarketFace("1", "[摸摸头]"), MarketFace("2"))) == [
        {"type": "Plain", "text": "[摸摸头]"},
        {"type": "Plain", "text": "[商城表情]"},
    ]


def test_segments_mirai_lacks_become_plain() -> None:
    assert encode_chain((Markdown("**hi**"), Rps(1))) == [
        {"type": "Plain", "text": "**hi**"},
        {"type": "Plain", "text": "[猜拳]"},
    ]


def test_raw_round_trips_only_for_mirai() -> None:
    msg = (
        Raw("onebot", "mface", {"emoji_id": "1"}),
        Raw("mirai", "", {"value": "1"}),
        Raw("mirai", "MiraiCode", {"code": "[mirai:atall]"}),
        Raw("mirai", "Unknown", {"type": "Unknown"}),
    )
    assert encode_chain(msg) == [{"type": "MiraiCode", "code": "[mirai:atall]"}, {"type": "Unknown"}]


def test_numeric_ids_go_out_as_ints() -> None:
    msg = (At("12345"), At("abc"), Face("", "微笑"), Face("-1", "", big=True))
    assert encode_chain(msg) == [
        {"type": "At", "target": 12345},
        {"type": "At", "target": "abc"},
        {"type": "Face", "name": "微笑", "isSuperFace": False},
        {"type": "Face", "name": "", "isSuperFace": True},
    ]


def test_forward_node_forms_and_partial_display() -> None:
    seg = Forward(
        nodes=(
            ForwardNode("10001", "Alice", (Text("a"),), 1700000000, message_id="9"),
            ForwardNode(message_id="-42"),
            ForwardNode(message_id="7", ref_target="987654321"),
            ForwardNode(sender_name="nobody"),
        ),
        title="记录",
        preview=("x",),
    )
    assert encode_chain((seg,)) == [
        {
            "type": "Forward",
            "display": {"title": "记录", "brief": None, "source": None, "summary": None, "preview": ["x"]},
            "nodeList": [
                {
                    "senderId": 10001,
                    "time": 1700000000,
                    "senderName": "Alice",
                    "messageChain": [{"type": "Plain", "text": "a"}],
                },
                {"messageId": -42},
                {"messageRef": {"messageId": 7, "target": 987654321}},
                {"senderId": 0, "time": 0, "senderName": "nobody", "messageChain": []},
            ],
        }
    ]


def test_video_sends_required_fields_even_when_empty() -> None:
    assert encode_chain((Video(id="vid"),)) == [
        {
            "type": "ShortVideo",
            "videoId": "vid",
            "fileMd5": "",
            "fileSize": 0,
            "fileFormat": "",
            "filename": "",
        }
    ]


def test_card_kinds() -> None:
    msg = (Card("xml", "<x/>"), Card("json", "{}"), Card("app", "{}"))
    assert encode_chain(msg) == [
        {"type": "Xml", "xml": "<x/>"},
        {"type": "Json", "json": "{}"},
        {"type": "App", "content": "{}"},
    ]


# --- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize("chain", [None, {}, "abc", 5, {"type": "Plain", "text": "x"}, (1, 2)])
def test_chain_not_a_list_gives_empty_message(chain: object) -> None:
    assert decode_chain(chain) == DecodedChain((), "", 0)


def test_elements_that_are_not_dicts_become_raw() -> None:
    assert decode_chain([1, "x", None, [2]]).message == (
        Raw("mirai", "", {"value": "1"}),
        Raw("mirai", "", {"value": "'x'"}),
        Raw("mirai", "", {"value": "None"}),
        Raw("mirai", "", {"value": "[2]"}),
    )


@pytest.mark.parametrize(
    ("element", "kind"),
    [
        ({"text": "no type"}, ""),
        ({"type": 5, "text": "x"}, ""),
        ({"type": None}, ""),
        ({"type": "At", "target": "abc"}, "At"),
        ({"type": "At", "target": True}, "At"),
        ({"type": "At"}, "At"),
        ({"type": "Plain", "text": 123}, "Plain"),
        ({"type": "Face", "faceId": "smile"}, "Face"),
        ({"type": "Image", "imageId": ["x"]}, "Image"),
        ({"type": "Forward", "display": None, "nodeList": "abc"}, "Forward"),
        ({"type": "Forward", "display": None, "nodeList": [1]}, "Forward"),
        ({"type": "Forward", "display": "abc", "nodeList": []}, "Forward"),
        ({"type": "Forward", "display": {"preview": "abc"}, "nodeList": []}, "Forward"),
        ({"type": "Forward", "nodeList": [{"senderId": 1, "messageChain": "abc"}]}, "Forward"),
        ({"type": "Forward", "nodeList": [{"messageRef": 5}]}, "Forward"),
        ({"type": "Quote", "id": 1, "origin": "abc"}, "Quote"),
        ({"type": "Quote", "origin": []}, "Quote"),
        ({"type": "Quote", "id": 1, "senderId": "bob", "origin": []}, "Quote"),
        ({"type": "Xml", "xml": {"a": 1}}, "Xml"),
    ],
)
def test_malformed_element_becomes_raw(element: dict[str, Any], kind: str) -> None:
    assert decode_chain([element, {"type": "Plain", "text": "after"}]).message == (
        Raw("mirai", kind, element),
        Text("after"),
    )


def test_lenient_fields_fall_back_to_defaults() -> None:
    chain = [
        {"type": "At", "target": "1234"},
        {"type": "Image", "imageId": 42, "width": "640", "height": "tall", "size": None, "isEmoji": "yes"},
        {"type": "Dice", "value": "x"},
        {"type": "Voice", "voiceId": "v.amr", "length": 1.5},
        {"type": "Poke"},
        {"type": "Forward"},
        {"type": "Quote", "id": "88", "groupId": "0", "senderId": 1, "targetId": 2},
        {"type": "File", "id": 7, "name": "a.txt", "size": -1},
        {"type": "Plain"},
    ]
    assert decode_chain(chain).message == (
        At("1234"),
        Image(id="42", width=640),
        Dice(0),
        Voice(id="v.amr"),
        Poke("Poke"),
        Forward(),
        Quote("88", "1", "", "2"),
        File("7", "a.txt", -1),
        Text(""),
    )


def test_deeply_nested_forward_stops_at_a_depth_limit() -> None:
    decoded = decode_chain([_nested_forward(5000)])
    levels = 0
    seg = decoded.message[0]
    while isinstance(seg, Forward):
        levels += 1
        seg = seg.nodes[0].message[0]
    assert levels == 16
    assert isinstance(seg, Raw)
    assert seg.type == "Forward"
    # The kept element still goes back out untouched.
    bottom = encode_chain(decoded.message)[0]
    for _ in range(16):
        bottom = bottom["nodeList"][0]["messageChain"][0]
    assert bottom["type"] == "Forward"
    assert bottom["nodeList"] is seg.data["nodeList"]


def test_shallow_nesting_decodes_fully() -> None:
    decoded = decode_chain([_nested_forward(10)])
    segments = _walk(decoded.message)
    assert sum(isinstance(seg, Forward) for seg in segments) == 10
    assert segments[-1] == Text("bottom")


def test_huge_numbers_do_not_raise() -> None:
    big = "9" * 5000
    decoded = decode_chain([{"type": "Source", "id": big}, {"type": "Image", "imageId": "i", "size": big}])
    assert decoded == DecodedChain((Image(id="i"),), "", 0)
    assert encode_chain((At(big),)) == [{"type": "At", "target": big}]


@pytest.mark.parametrize(
    ("written", "dialled"),
    [
        ("http://localhost:8080", "ws://localhost:8080/all"),
        ("https://mirai.example:443/", "wss://mirai.example:443/all"),
        ("ws://mirai:8080/message", "ws://mirai:8080/message"),
        ("mirai:8080", "ws://mirai:8080/all"),
    ],
)
def test_forward_ws_url_as_v2_configs_write_it(written: str, dialled: str) -> None:
    from adapters.mirai.forward import ws_address

    assert ws_address(written) == dialled
