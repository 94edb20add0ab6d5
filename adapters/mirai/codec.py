"""Translate mirai-api-http message chains to and from the shared message model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from adapters.fields import NUMBER as _NUMBER
from adapters.fields import Malformed as _Malformed
from adapters.fields import integer as _int
from adapters.fields import mapping as _mapping
from adapters.fields import number_id as _number_id
from adapters.fields import text as _id
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

PROTOCOL = "mirai"

# Quotes and forwards carry whole chains; past this depth the element is kept as Raw instead of
# recursing further, so runaway or hostile nesting cannot exhaust the stack.
_MAX_DEPTH = 16


_Element: TypeAlias = Mapping[str, Any]
_Json: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DecodedChain:
    """An incoming chain: its content plus the id and time taken from its Source element."""

    message: Message
    message_id: str = ""
    time: int = 0


# --- tolerant field getters: missing or null always gives the default ---------------------------


def _str(el: _Element, key: str) -> str:
    value = el.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise _Malformed(key)


def _flag(el: _Element, key: str) -> bool:
    return el.get(key) is True


def _str_tuple(el: _Element, key: str) -> tuple[str, ...]:
    value = el.get(key)
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _Malformed(key)


def _sub_chain(value: object, depth: int) -> Message:
    if value is None:
        return ()
    if not isinstance(value, list) or depth >= _MAX_DEPTH:
        raise _Malformed("chain")
    return _decode(value, depth + 1).message


# --- decoding ------------------------------------------------------------------------------------


def _at(el: _Element, depth: int) -> At:
    target = _number_id(el, "target")
    if not target:
        raise _Malformed("target")
    return At(target, _str(el, "display"))


def _face(el: _Element, depth: int) -> Face:
    # The DTO field is isSuperFace; the docs example spells it superFace, so honour both.
    big = _flag(el, "isSuperFace") or _flag(el, "superFace")
    return Face(_number_id(el, "faceId"), _str(el, "name"), big)


def _image(el: _Element, depth: int) -> Image:
    return Image(
        id=_id(el, "imageId"),
        url=_str(el, "url"),
        path=_str(el, "path"),
        base64=_str(el, "base64"),
        flash=el.get("type") == "FlashImage",
        emoji=_flag(el, "isEmoji"),
        width=_int(el, "width"),
        height=_int(el, "height"),
        size=_int(el, "size"),
    )


def _voice(el: _Element, depth: int) -> Voice:
    return Voice(
        id=_id(el, "voiceId"),
        url=_str(el, "url"),
        path=_str(el, "path"),
        base64=_str(el, "base64"),
        length=_int(el, "length"),
    )


def _music(el: _Element, depth: int) -> Music:
    return Music(
        kind=_str(el, "kind"),
        title=_str(el, "title"),
        summary=_str(el, "summary"),
        jump_url=_str(el, "jumpUrl"),
        picture_url=_str(el, "pictureUrl"),
        music_url=_str(el, "musicUrl"),
        brief=_str(el, "brief"),
    )


def _video(el: _Element, depth: int) -> Video:
    return Video(
        id=_id(el, "videoId"),
        url=_str(el, "videoUrl"),
        name=_str(el, "filename"),
        size=_int(el, "fileSize"),
        md5=_str(el, "fileMd5"),
        format=_str(el, "fileFormat"),
        thumbnail_url=_str(el, "thumbnailUrl"),
    )


def _quote(el: _Element, depth: int) -> Quote:
    message_id = _number_id(el, "id")
    if not message_id:
        raise _Malformed("id")
    group_id = _number_id(el, "groupId")
    return Quote(
        message_id=message_id,
        sender_id=_number_id(el, "senderId"),
        # mirai puts 0 here for friend messages, which means "no group".
        group_id="" if group_id == "0" else group_id,
        target_id=_number_id(el, "targetId"),
        origin=_sub_chain(el.get("origin"), depth),
    )


def _forward_node(node: object, depth: int) -> ForwardNode:
    if not isinstance(node, Mapping):
        raise _Malformed("nodeList")
    message_id = _number_id(node, "messageId")
    ref_target = ""
    ref = _mapping(node, "messageRef")
    if ref:
        message_id = _number_id(ref, "messageId")
        ref_target = _number_id(ref, "target")
    return ForwardNode(
        sender_id=_number_id(node, "senderId"),
        sender_name=_str(node, "senderName"),
        message=_sub_chain(node.get("messageChain"), depth),
        time=_int(node, "time"),
        message_id=message_id,
        ref_target=ref_target,
    )


def _forward(el: _Element, depth: int) -> Forward:
    display = _mapping(el, "display")
    nodes = el.get("nodeList")
    if nodes is not None and not isinstance(nodes, list):
        raise _Malformed("nodeList")
    return Forward(
        nodes=tuple(_forward_node(node, depth) for node in nodes or ()),
        title=_str(display, "title"),
        brief=_str(display, "brief"),
        source=_str(display, "source"),
        summary=_str(display, "summary"),
        preview=_str_tuple(display, "preview"),
    )


_DECODERS: dict[str, Callable[[_Element, int], Segment]] = {
    "Plain": lambda el, depth: Text(_str(el, "text")),
    "At": _at,
    "AtAll": lambda el, depth: AtAll(),
    "Face": _face,
    "Image": _image,
    "FlashImage": _image,
    "Voice": _voice,
    "Xml": lambda el, depth: Card("xml", _str(el, "xml")),
    "Json": lambda el, depth: Card("json", _str(el, "json")),
    "App": lambda el, depth: Card("app", _str(el, "content")),
    "Poke": lambda el, depth: Poke(_str(el, "name") or "Poke"),
    "Dice": lambda el, depth: Dice(_int(el, "value")),
    "MarketFace": lambda el, depth: MarketFace(_number_id(el, "id"), _str(el, "name")),
    "MusicShare": _music,
    "Forward": _forward,
    "File": lambda el, depth: File(_id(el, "id"), _str(el, "name"), _int(el, "size")),
    "ShortVideo": _video,
    "Quote": _quote,
    "MiraiCode": lambda el, depth: Raw(PROTOCOL, "MiraiCode", {"code": _str(el, "code")}),
}


def _decode_element(el: object, depth: int) -> Segment:
    if not isinstance(el, Mapping):
        return Raw(PROTOCOL, "", {"value": repr(el)})
    kind = el.get("type")
    kind = kind if isinstance(kind, str) else ""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return Raw(PROTOCOL, kind, dict(el))
    try:
        return decoder(el, depth)
    except (_Malformed, ValueError, TypeError):
        # Wire data is untrusted: keep a bad element whole as Raw rather than lose the whole message.
        return Raw(PROTOCOL, kind, dict(el))


def _decode(chain: list[Any], depth: int) -> DecodedChain:
    segments: list[Segment] = []
    message_id, time = "", 0
    for el in chain:
        if isinstance(el, Mapping) and el.get("type") == "Source":
            # The id may be malformed; the message is still worth handling without it.
            with contextlib.suppress(_Malformed):
                message_id = message_id or _number_id(el, "id")
            time = time or _int(el, "time")
            continue
        segments.append(_decode_element(el, depth))
    return DecodedChain(tuple(segments), message_id, time)


def decode_chain(chain: object) -> DecodedChain:
    """Decode an incoming messageChain; never raises, unusable elements become Raw("mirai", ...)."""
    if not isinstance(chain, list):
        return DecodedChain(())
    return _decode(chain, 0)


# --- encoding ------------------------------------------------------------------------------------


def _num(value: str) -> int | str:
    """Numbers go out as ints because mirai's Long/Int fields want them; anything else is sent as-is."""
    if not value:
        return 0
    return int(value) if _NUMBER.fullmatch(value) else value


def _plain(text: str) -> _Json:
    return {"type": "Plain", "text": text}


def _plain_base64(data: str) -> str:
    """mirai-api-http decodes `base64` as bare base64: a `base64://` or `data:…;base64,` head is taken off."""
    if data.startswith("data:") and "," in data:
        return data.split(",", 1)[1]
    return data.removeprefix("base64://")


def _one_source(kind: str, id_key: str, seg: Image | Voice) -> _Json | None:
    # mirai honours only the first of these anyway; sending one keeps the request unambiguous.
    sources = ((id_key, seg.id), ("url", seg.url), ("path", seg.path), ("base64", _plain_base64(seg.base64)))
    for key, value in sources:
        if value:
            return {"type": kind, key: value}
    return None


def _enc_face(seg: Face) -> _Json:
    ref: _Json = {"faceId": int(seg.id)} if seg.id.isascii() and seg.id.isdigit() else {"name": seg.name}
    return {"type": "Face", **ref, "isSuperFace": seg.big}


def _enc_video(seg: Video) -> _Json:
    # The first five fields are required by mirai's ShortVideo DTO; the URLs are optional.
    out: _Json = {
        "type": "ShortVideo",
        "videoId": seg.id,
        "fileMd5": seg.md5,
        "fileSize": seg.size,
        "fileFormat": seg.format,
        "filename": seg.name,
    }
    if seg.url:
        out["videoUrl"] = seg.url
    if seg.thumbnail_url:
        out["thumbnailUrl"] = seg.thumbnail_url
    return out


def _enc_node(node: ForwardNode) -> _Json:
    if node.message or not (node.message_id or node.ref_target):
        return {
            "senderId": _num(node.sender_id),
            "time": node.time,
            "senderName": node.sender_name,
            "messageChain": encode_chain(node.message),
        }
    if node.ref_target:
        return {"messageRef": {"messageId": _num(node.message_id), "target": _num(node.ref_target)}}
    return {"messageId": _num(node.message_id)}


def _enc_forward(seg: Forward) -> _Json:
    shown: dict[str, str | list[str]] = {
        "title": seg.title,
        "brief": seg.brief,
        "source": seg.source,
        "summary": seg.summary,
        "preview": list(seg.preview),
    }
    # Current mirai-api-http declares display and its five keys nullable but without defaults, so they
    # must be present: null (not "") is what asks mirai for its client-side default.
    display = {key: value or None for key, value in shown.items()} if any(shown.values()) else None
    return {"type": "Forward", "display": display, "nodeList": [_enc_node(node) for node in seg.nodes]}


def _enc_raw(seg: Raw) -> _Json | None:
    # Only our own protocol's elements mean anything to mirai; without a type it cannot parse them.
    if seg.protocol != PROTOCOL or not seg.type:
        return None
    return {"type": seg.type, **{key: value for key, value in seg.data.items() if key != "type"}}


_CARD_FIELDS = {"xml": ("Xml", "xml"), "json": ("Json", "json"), "app": ("App", "content")}


def _enc_card(seg: Card) -> _Json | None:
    if seg.kind not in _CARD_FIELDS:
        return None
    kind, key = _CARD_FIELDS[seg.kind]
    return {"type": kind, key: seg.content}


_ENCODERS: dict[type, Callable[[Any], _Json | None]] = {
    Text: lambda seg: _plain(seg.text),
    At: lambda seg: {"type": "At", "target": _num(seg.target)},
    AtAll: lambda seg: {"type": "AtAll"},
    Face: _enc_face,
    Image: lambda seg: _one_source("FlashImage" if seg.flash else "Image", "imageId", seg),
    Voice: lambda seg: _one_source("Voice", "voiceId", seg),
    Video: _enc_video,
    File: lambda seg: {"type": "File", "id": seg.id, "name": seg.name, "size": seg.size},
    # Quoting is the send command's top-level `quote` field, not a chain element.
    Quote: lambda seg: None,
    Forward: _enc_forward,
    Card: _enc_card,
    Poke: lambda seg: {"type": "Poke", "name": seg.name},
    Dice: lambda seg: {"type": "Dice", "value": seg.value},
    Rps: lambda seg: _plain("[猜拳]"),
    # mirai can receive store stickers but not construct them, so say what it was instead.
    MarketFace: lambda seg: _plain(seg.name or "[商城表情]"),
    Music: lambda seg: {
        "type": "MusicShare",
        "kind": seg.kind,
        "title": seg.title,
        "summary": seg.summary,
        "jumpUrl": seg.jump_url,
        "pictureUrl": seg.picture_url,
        "musicUrl": seg.music_url,
        "brief": seg.brief,
    },
    Markdown: lambda seg: _plain(seg.content),
    Raw: _enc_raw,
}


def encode_chain(message: Message) -> list[dict[str, Any]]:
    """The mirai-api-http messageChain for sending `message`; segments mirai cannot send are dropped."""
    out: list[dict[str, Any]] = []
    for seg in message:
        encoder = _ENCODERS.get(type(seg))
        element = encoder(seg) if encoder is not None else None
        if element is not None:
            out.append(element)
    return out
