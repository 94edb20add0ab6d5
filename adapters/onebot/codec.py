"""Translate OneBot 11 message segments and CQ strings to and from the shared message model."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from adapters.fields import NUMBER as _NUMBER
from adapters.fields import Malformed as _Malformed
from adapters.fields import decode_typed, file_uri
from adapters.fields import integer as _int
from adapters.fields import mapping as _mapping
from adapters.fields import number_id as _number_id
from adapters.fields import text as _str
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

PROTOCOL = "onebot"

# Forwards carry whole messages; past this depth nested content is dropped instead of recursed into,
# so runaway or hostile nesting cannot exhaust the stack.
_MAX_DEPTH = 16


_CQ_OPEN = "[CQ:"

_Data: TypeAlias = Mapping[str, Any]
_Json: TypeAlias = dict[str, Any]


# --- tolerant field getters: missing or null always gives the default ---------------------------


def _first(data: _Data, *keys: str) -> Any:
    """The first non-null of several spellings of one field (spec, go-cqhttp and NTQQ names differ)."""
    for key in keys:
        value = data.get(key)
        if value is not None:
            return value
    return None


# --- CQ strings ----------------------------------------------------------------------------------


def _escape(text: str, param: bool) -> str:
    # `&` first, or the `&` of every other escape would itself be escaped.
    text = text.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return text.replace(",", "&#44;") if param else text


def _unescape(text: str) -> str:
    # `&amp;` last, so `&amp;#91;` (a literal "&#91;") is not turned into "[". `&#44;` is undone in
    # plain text too: no correct encoder produces it there, and some implementations over-escape.
    text = text.replace("&#91;", "[").replace("&#93;", "]").replace("&#44;", ",")
    return text.replace("&amp;", "&")


def _text_segment(text: str) -> _Json:
    return {"type": "text", "data": {"text": text}}


def parse_cq(text: str) -> list[dict[str, Any]]:
    """Split a CQ string into a segment array; never raises, anything that is not a CQ code is text."""
    if not isinstance(text, str):
        return []
    segments: list[dict[str, Any]] = []
    pending: list[str] = []  # raw text not yet emitted, unescaped once when a code or the end is reached

    def flush() -> None:
        plain = _unescape("".join(pending))
        pending.clear()
        if plain:
            segments.append(_text_segment(plain))

    pos = 0
    while (start := text.find(_CQ_OPEN, pos)) >= 0:
        # Values escape `]`, so the first one after the opening ends the code.
        end = text.find("]", start)
        if end < 0:
            break  # unterminated: the rest is plain text
        name, _, params = text[start + len(_CQ_OPEN) : end].partition(",")
        if not name:
            pending.append(text[pos : end + 1])  # "[CQ:]" names nothing, so keep it as the user wrote it
            pos = end + 1
            continue
        pending.append(text[pos:start])
        flush()
        data: dict[str, str] = {}
        for param in params.split(","):
            if param:  # a trailing or doubled comma adds nothing
                key, _, value = param.partition("=")
                data[key] = _unescape(value)
        segments.append({"type": name, "data": data})
        pos = end + 1
    pending.append(text[pos:])
    flush()
    return segments


def _cq_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return encode_cq(value)  # node content is a message, and go-cqhttp nests it as a CQ string
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def encode_cq(segments: list[dict[str, Any]]) -> str:
    """The CQ string for a segment array (for logs and tests: we always send arrays)."""
    out: list[str] = []
    for seg in segments:
        if not isinstance(seg, Mapping) or not isinstance(seg.get("type"), str) or not seg["type"]:
            continue
        data = seg.get("data")
        data = data if isinstance(data, Mapping) else {}
        if seg["type"] == "text":
            out.append(_escape(_cq_value(data.get("text")), param=False))
            continue
        params = "".join(
            f",{key}={_escape(_cq_value(value), param=True)}" for key, value in data.items() if value is not None
        )
        out.append(f"{_CQ_OPEN}{seg['type']}{params}]")
    return "".join(out)


# --- decoding ------------------------------------------------------------------------------------


def _items(message: object) -> list[Any]:
    """The segment list behind any of OneBot's three message forms: array, one segment, CQ string."""
    if isinstance(message, str):
        return parse_cq(message)
    if isinstance(message, Mapping):
        return [message]
    if isinstance(message, list):
        return message
    return []


def _sub_message(value: object, depth: int) -> Message:
    if value is None:
        return ()
    if depth >= _MAX_DEPTH or not isinstance(value, str | Mapping | list):
        raise _Malformed("content")
    return _decode(_items(value), depth + 1)


def _face(d: _Data, depth: int) -> Face:
    face_id = _number_id(d, "id")
    if not face_id:
        raise _Malformed("id")
    # NapCat adds the NTQQ element as `raw`; its faceText is the only place a name appears: "/微笑" for
    # classic faces, "[打call]" for newer ones (recorded NapCat traffic, tests/samples/onebot/real.json).
    raw = d.get("raw")
    raw = raw if isinstance(raw, Mapping) else {}
    name = raw.get("faceText")
    name = name.lstrip("/") if isinstance(name, str) else ""
    if len(name) > 2 and name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    # NTQQ face type 3 is a super (large, animated) face; LLOneBot reports it as sub_type.
    big = _int(d, "sub_type") == 3 or _int(raw, "faceType") == 3
    return Face(face_id, name, big)


def _image(d: _Data, depth: int) -> Image:
    # NTQQ picture sub type 1 is a sticker (表情包); NapCat spells the key sub_type, LLOneBot subType.
    sub_type = _int(d, "sub_type") if "sub_type" in d else _int(d, "subType")
    # `path` is deliberately not kept: it is a path on the OneBot host, which is not necessarily ours.
    return Image(
        id=_str(d, "file"),
        url=_str(d, "url"),
        flash=d.get("type") == "flash",
        emoji=sub_type == 1,
        size=_int(d, "file_size"),
    )


def _record(d: _Data, depth: int) -> Voice:
    # NapCat, LLOneBot and go-cqhttp put a download URL in `url` and a file name in `file`; some implementations
    # (and the bot's own echoed messages) carry the voice itself in `file` as base64:// or as an http(s) URL.
    file, url = _str(d, "file"), _str(d, "url")
    if file.startswith("base64://"):
        return Voice(url=url, base64=file.removeprefix("base64://"))
    if not url and file.startswith(("http://", "https://")):
        url = file
    return Voice(id=file, url=url)


def _at(d: _Data, depth: int) -> At | AtAll:
    qq = _str(d, "qq")
    if qq == "all":
        return AtAll()
    if not _NUMBER.fullmatch(qq):
        raise _Malformed("qq")
    return At(qq, _str(d, "name"))


def _reply(d: _Data, depth: int) -> Quote:
    # The id is an opaque handle for get_msg, so any non-empty value is kept; the adapter fills origin.
    message_id = _str(d, "id")
    if not message_id:
        raise _Malformed("id")
    return Quote(message_id)


def _forward_nodes(value: object, depth: int) -> tuple[ForwardNode, ...]:
    if isinstance(value, str):
        value = parse_cq(value)
    if not isinstance(value, list):
        return ()
    nodes: list[ForwardNode] = []
    for item in value:
        try:
            nodes.append(_forward_node(item, depth))
        except (_Malformed, ValueError, TypeError):
            # One unreadable node should not cost the others; the forward's id can still fetch them all.
            continue
    return tuple(nodes)


def _forward(d: _Data, depth: int) -> Forward:
    # NapCat inlines the nodes as `content`; LLOneBot sends only the id, expanded via get_forward_msg.
    return Forward(nodes=_forward_nodes(d.get("content"), depth), id=_str(d, "id"))


def _node_data(d: _Data, depth: int) -> ForwardNode:
    """A node segment's data: by reference `{id}`, or `{user_id,nickname,content}` / go-cqhttp `{uin,name,content}`."""
    content = _first(d, "content", "message")
    message_id = _str(d, "id")
    if content is None:
        if not message_id:
            raise _Malformed("content")
        return ForwardNode(message_id=message_id)
    return ForwardNode(
        sender_id=_number_id(d, "user_id") or _number_id(d, "uin"),
        sender_name=_str(d, "nickname") or _str(d, "name"),
        message=_sub_message(content, depth),
        time=_int(d, "time"),
        message_id=message_id,
    )


def _message_object(item: _Data, depth: int) -> ForwardNode:
    """A whole OB11 message used as a node: NapCat's inline forward content and get_forward_msg `messages`."""
    # get_forward_msg moves `message` to `content`; NapCat's inline content keeps `message`.
    content = _first(item, "content", "message")
    if content is None:
        raise _Malformed("content")
    sender = _mapping(item, "sender")
    return ForwardNode(
        sender_id=_number_id(sender, "user_id") or _number_id(item, "user_id"),
        sender_name=_str(sender, "nickname") or _str(sender, "card"),
        message=_sub_message(content, depth),
        time=_int(item, "time"),
        message_id=_str(item, "message_id"),
    )


def _forward_node(item: object, depth: int) -> ForwardNode:
    if not isinstance(item, Mapping):
        raise _Malformed("node")
    if item.get("type") == "node":
        return _node_data(_mapping(item, "data"), depth)
    return _message_object(item, depth)


def _json_card(d: _Data, depth: int) -> Card:
    value = d.get("data")
    # NapCat's type allows the ark as an object as well as its JSON text.
    if isinstance(value, Mapping | list):
        return Card("json", json.dumps(value, ensure_ascii=False))
    if not isinstance(value, str) or not value:
        raise _Malformed("data")
    return Card("json", value)


def _xml_card(d: _Data, depth: int) -> Card:
    value = _str(d, "data")
    if not value:
        raise _Malformed("data")
    return Card("xml", value)


def _file(d: _Data, depth: int) -> File:
    # `file` is the file name on NapCat and LLOneBot; `file_id` is the handle get_file wants.
    name = _str(d, "name") or _str(d, "file")
    return File(
        id=_str(d, "file_id") or _str(d, "file"),
        name=name,
        size=_int(d, "file_size") or _int(d, "size"),
        url=_str(d, "url"),
    )


def _markdown(d: _Data, depth: int) -> Markdown:
    # Some LLOneBot versions put the text under `data` instead of `content`.
    return Markdown(_str(d, "content") or _str(d, "data"))


def _music(d: _Data, depth: int) -> Music | Raw:
    kind = _str(d, "type")
    if kind != "custom" and not _str(d, "url") and _str(d, "id"):
        # A platform song id (qq/163/xm) has no field in the model; kept Raw it is re-sent unchanged.
        return Raw(PROTOCOL, "music", dict(d))
    return Music(
        kind=kind,
        title=_str(d, "title"),
        summary=_str(d, "content"),
        jump_url=_str(d, "url"),
        picture_url=_str(d, "image"),
        music_url=_str(d, "audio"),
    )


_DECODERS: dict[str, Callable[[_Data, int], Segment]] = {
    "text": lambda d, depth: Text(_str(d, "text")),
    "face": _face,
    "image": _image,
    "record": _record,
    "video": lambda d, depth: Video(
        id=_str(d, "file"),
        url=_str(d, "url"),
        name=_str(d, "name"),
        size=_int(d, "file_size"),
    ),
    "at": _at,
    "reply": _reply,
    "forward": _forward,
    "json": _json_card,
    "xml": _xml_card,
    "poke": lambda d, depth: Poke(_str(d, "name") or _str(d, "type") or "Poke", _str(d, "id")),
    "dice": lambda d, depth: Dice(_int(d, "result")),
    "rps": lambda d, depth: Rps(_int(d, "result")),
    "file": _file,
    "markdown": _markdown,
    "mface": lambda d, depth: MarketFace(_str(d, "emoji_id"), _str(d, "summary"), _str(d, "url")),
    "music": _music,
    # share, contact, location, shake, node (outside a forward) and the rest stay Raw: the model has no
    # type for them, and Raw("onebot") goes back out exactly as it came in.
}


def _decode_segment(el: object, depth: int) -> Segment:
    return decode_typed(el, depth, PROTOCOL, _DECODERS)


def _decode(items: list[Any], depth: int) -> Message:
    return tuple(_decode_segment(el, depth) for el in items)


def decode_message(message: object) -> Message:
    """Decode a segment array, one segment or a CQ string; never raises, unusable parts become Raw("onebot")."""
    return _decode(_items(message), 0)


def decode_forward_result(data: object) -> tuple[ForwardNode, ...]:
    """The nodes of a get_forward_msg result: spec `{message:[node…]}` or LLOneBot/NapCat `{messages:[msg…]}`."""
    if isinstance(data, Mapping):
        data = _first(data, "messages", "message")
    return _forward_nodes(data, 0)


# --- encoding ------------------------------------------------------------------------------------


def _base64_uri(data: str) -> str:
    if data.startswith("base64://"):
        return data
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]  # a data: URI's payload is already the base64 text
    return "base64://" + data


def _file_value(url: str, path: str, base64: str, file_id: str) -> str:
    """The `file` param: a URL, then a local path, then inline data, then the platform's own id."""
    if url:
        return url
    if path:
        return file_uri(path)
    if base64:
        return _base64_uri(base64)
    return file_id


def _media(kind: str, file: str, **extra: str) -> _Json | None:
    if not file:
        return None
    return {"type": kind, "data": {"file": file, **extra}}


def _enc_image(seg: Image) -> _Json | None:
    extra = {"type": "flash"} if seg.flash else {}
    return _media("image", _file_value(seg.url, seg.path, seg.base64, seg.id), **extra)


def _enc_face(seg: Face) -> _Json:
    if seg.id.isascii() and seg.id.isdigit():
        return {"type": "face", "data": {"id": seg.id}}
    # OneBot can send a face only by id; a name-only face (from another protocol) is said in words.
    return _text_segment(f"[表情:{seg.name}]" if seg.name else "[表情]")


# mirai's PokeMessage table, which OneBot 11's poke{type,id} copies: mirai-api-http names, mirai's
# Kotlin names and the Chinese display names all map to the (type, id) pair OneBot needs to send it.
_POKE_TABLE: tuple[tuple[tuple[str, ...], tuple[str, str]], ...] = (
    (("Poke", "ChuoYiChuo", "戳一戳"), ("1", "-1")),
    (("ShowLove", "BiXin", "比心"), ("2", "-1")),
    (("Like", "DianZan", "点赞"), ("3", "-1")),
    (("Heartbroken", "XinSui", "心碎"), ("4", "-1")),
    (("SixSixSix", "LiuLiuLiu", "666"), ("5", "-1")),
    (("FangDaZhao", "放大招"), ("6", "-1")),
    (("BaoBeiQiu", "宝贝球"), ("126", "2011")),
    (("Rose", "玫瑰花"), ("126", "2007")),
    (("ZhaoHuanShu", "召唤术"), ("126", "2006")),
    (("RangNiPi", "让你皮"), ("126", "2009")),
    (("JieYin", "结印"), ("126", "2005")),
    (("ShouLei", "手雷"), ("126", "2004")),
    (("GouYin", "勾引"), ("126", "2003")),
    (("ZhuaYiXia", "抓一下"), ("126", "2001")),
    (("SuiPing", "碎屏"), ("126", "2002")),
    (("QiaoMen", "敲门"), ("126", "2002")),
)
_POKE_KINDS: dict[str, tuple[str, str]] = {name: pair for names, pair in _POKE_TABLE for name in names}


def _enc_poke(seg: Poke) -> _Json:
    if seg.name in _POKE_KINDS:
        poke_type, poke_id = _POKE_KINDS[seg.name]
    elif seg.name.isascii() and seg.name.isdigit():
        # Decoded without a name, so `name` holds the numeric type itself.
        poke_type, poke_id = seg.name, seg.id or "-1"
    else:
        # An unknown name: every mirai poke with a real id is type 126, the id-less ones are plain pokes.
        poke_type, poke_id = ("126", seg.id) if seg.id and seg.id != "-1" else ("1", "-1")
    return {"type": "poke", "data": {"type": poke_type, "id": poke_id}}


def _enc_music(seg: Music) -> _Json:
    # Always custom: the model keeps URLs, not the qq/163 song ids the other music types need.
    data = {"type": "custom", "url": seg.jump_url, "audio": seg.music_url, "title": seg.title}
    if seg.summary:
        data["content"] = seg.summary
    if seg.picture_url:
        data["image"] = seg.picture_url
    return {"type": "music", "data": data}


def _enc_card(seg: Card) -> _Json | None:
    if seg.kind not in ("json", "xml", "app"):
        return None
    # An app (ark) card is JSON, and OneBot sends arks as json segments.
    return {"type": "xml" if seg.kind == "xml" else "json", "data": {"data": seg.content}}


def _enc_raw(seg: Raw) -> _Json | None:
    # Only our own protocol's segments mean anything to a OneBot implementation.
    if seg.protocol != PROTOCOL or not seg.type:
        return None
    return {"type": seg.type, "data": dict(seg.data)}


_ENCODERS: dict[type, Callable[[Any], _Json | None]] = {
    # An empty text segment adds nothing and some implementations reject it.
    Text: lambda seg: _text_segment(seg.text) if seg.text else None,
    At: lambda seg: {"type": "at", "data": {"qq": seg.target}} if seg.target else None,
    AtAll: lambda seg: {"type": "at", "data": {"qq": "all"}},
    Face: _enc_face,
    Image: _enc_image,
    Voice: lambda seg: _media("record", _file_value(seg.url, seg.path, seg.base64, seg.id)),
    Video: lambda seg: _media("video", _file_value(seg.url, seg.path, "", seg.id)),
    # Files go through upload_group_file / upload_private_file, never as a message segment.
    File: lambda seg: None,
    # Placed first by encode_message, not where it stands.
    Quote: lambda seg: None,
    # Sent with send_*_forward_msg (see encode_forward_nodes); inside a message it can only be named.
    Forward: lambda seg: _text_segment("[聊天记录]"),
    Card: _enc_card,
    Poke: _enc_poke,
    # The implementation rolls the value; OneBot cannot choose it.
    Dice: lambda seg: {"type": "dice", "data": {}},
    Rps: lambda seg: {"type": "rps", "data": {}},
    # Store stickers need a key and package id the model does not keep, so say what it was instead.
    MarketFace: lambda seg: _text_segment(seg.name or "[表情]"),
    Music: _enc_music,
    Markdown: lambda seg: _text_segment(seg.content) if seg.content else None,
    Raw: _enc_raw,
}


def encode_message(message: Message) -> list[dict[str, Any]]:
    """The segment array for sending `message`; a quote goes first, segments OneBot cannot send are dropped."""
    out: list[dict[str, Any]] = []
    reply: _Json | None = None
    for seg in message:
        if isinstance(seg, Quote):
            # OneBot wants the reply segment first and honours only one.
            if reply is None and seg.message_id:
                reply = {"type": "reply", "data": {"id": seg.message_id}}
            continue
        encoder = _ENCODERS.get(type(seg))
        element = encoder(seg) if encoder is not None else None
        if element is not None:
            out.append(element)
    return [reply, *out] if reply is not None else out


def encode_forward_nodes(forward: Forward, self_id: str, nickname: str) -> list[dict[str, Any]]:
    """Node segments for send_group_forward_msg / send_private_forward_msg; `content` is an array, not a string."""
    nodes: list[dict[str, Any]] = []
    for node in forward.nodes:
        if not node.message and node.message_id:
            nodes.append({"type": "node", "data": {"id": node.message_id}})
            continue
        content = encode_message(node.message)
        if not content:
            continue  # implementations fail or drop an empty node; leaving it out keeps the rest sendable
        data = {"user_id": node.sender_id or self_id, "nickname": node.sender_name or nickname, "content": content}
        nodes.append({"type": "node", "data": data})
    return nodes
