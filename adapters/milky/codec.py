"""Translate Milky incoming and outgoing message segments to and from the shared message model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

from adapters.fields import NUMBER as _NUMBER
from adapters.fields import Malformed as _Malformed
from adapters.fields import decode_typed
from adapters.fields import file_uri as _file_uri
from adapters.fields import integer as _int
from adapters.fields import number_id as _number_id
from adapters.fields import text as _str
from core.message import (
    At,
    AtAll,
    Card,
    Face,
    File,
    Forward,
    ForwardNode,
    Image,
    Markdown,
    MarketFace,
    Message,
    Quote,
    Raw,
    Segment,
    Text,
    Video,
    Voice,
)

PROTOCOL = "milky"

# Replies carry the quoted message's segments, which may quote again; past this depth the nested
# content is dropped instead of recursed into, so hostile nesting cannot exhaust the stack.
_MAX_DEPTH = 16

# Milky sends int64 numbers; an implementation may stringify them, so an all-digit string counts too.

# The IR allows one to four preview lines on an outgoing forward.
_MAX_PREVIEW = 4

_Data: TypeAlias = Mapping[str, Any]
_Json: TypeAlias = dict[str, Any]


# --- tolerant field getters: missing or null always gives the default ---------------------------


def _bool(data: _Data, key: str) -> bool:
    # true or 1 counts; a stray "false" string must not turn into True the way bool("false") would.
    value = data.get(key)
    return isinstance(value, int) and bool(value)


def _as_int(value: str) -> int | None:
    """The int a model id stands for, or None when it is not a number (an id from another platform)."""
    text = value.strip()
    return int(text) if _NUMBER.fullmatch(text) else None


# --- decoding ------------------------------------------------------------------------------------


def _items(segments: object) -> list[Any]:
    if isinstance(segments, list | tuple):
        return list(segments)
    if isinstance(segments, Mapping) and "type" in segments:
        return [segments]  # a lone segment where a list belongs: read it rather than lose it
    return []


def _mention(d: _Data, depth: int) -> At:
    user_id = _number_id(d, "user_id")
    if not user_id:
        raise _Malformed("user_id")
    return At(user_id, _str(d, "name"))


def _face(d: _Data, depth: int) -> Face:
    face_id = _str(d, "face_id")
    if not face_id:
        raise _Malformed("face_id")
    return Face(face_id, big=_bool(d, "is_large"))


def _reply(d: _Data, depth: int) -> Quote:
    message_seq = _number_id(d, "message_seq")
    if not message_seq:
        raise _Malformed("message_seq")
    # Since 1.2 the quoted content comes along; too deep a chain keeps the quote and drops its content.
    origin = _decode(_items(d.get("segments")), depth + 1) if depth + 1 < _MAX_DEPTH else ()
    return Quote(message_id=message_seq, sender_id=_number_id(d, "sender_id"), origin=origin)


def _image(d: _Data, depth: int) -> Image:
    return Image(
        id=_str(d, "resource_id"),
        url=_str(d, "temp_url"),
        width=_int(d, "width"),
        height=_int(d, "height"),
        emoji=d.get("sub_type") == "sticker",
    )


def _forward(d: _Data, depth: int) -> Forward:
    forward_id = _str(d, "forward_id")
    if not forward_id:
        raise _Malformed("forward_id")  # without the id the content can never be fetched
    preview = d.get("preview")
    lines = tuple(line for line in preview if isinstance(line, str)) if isinstance(preview, list) else ()
    return Forward(id=forward_id, title=_str(d, "title"), preview=lines, summary=_str(d, "summary"))


def _payload(d: _Data, key: str) -> str:
    payload = _str(d, key)
    if not payload:
        raise _Malformed(key)  # a card with nothing in it is not a card
    return payload


_DECODERS: dict[str, Callable[[_Data, int], Segment]] = {
    "text": lambda d, depth: Text(_str(d, "text")),
    "mention": _mention,
    "mention_all": lambda d, depth: AtAll(),
    "face": _face,
    "reply": _reply,
    "image": _image,
    "record": lambda d, depth: Voice(id=_str(d, "resource_id"), url=_str(d, "temp_url"), length=_int(d, "duration")),
    "video": lambda d, depth: Video(id=_str(d, "resource_id"), url=_str(d, "temp_url")),
    "file": lambda d, depth: File(id=_str(d, "file_id"), name=_str(d, "file_name"), size=_int(d, "file_size")),
    "forward": _forward,
    "market_face": lambda d, depth: MarketFace(_str(d, "emoji_id"), _str(d, "summary"), _str(d, "url")),
    "light_app": lambda d, depth: Card("json", _payload(d, "json_payload")),
    "xml": lambda d, depth: Card("xml", _payload(d, "xml_payload")),
}


def _decode_segment(el: object, depth: int) -> Segment:
    return decode_typed(el, depth, PROTOCOL, _DECODERS)


def _decode(items: list[Any], depth: int) -> Message:
    return tuple(_decode_segment(el, depth) for el in items)


def decode_segments(segments: object) -> Message:
    """Decode an incoming segment list; never raises, unusable parts become Raw("milky")."""
    return _decode(_items(segments), 0)


def message_segments(data: dict[str, Any]) -> object:
    """The segment list of an incoming message: `segments`, or `message` as the 2025-05 draft named it."""
    if not isinstance(data, Mapping):
        return []
    segments = data.get("segments")
    if isinstance(segments, list):
        return segments
    legacy = data.get("message")
    if isinstance(legacy, list):
        return legacy
    # Neither is a list: hand back whatever is there and let decode_segments judge it.
    return segments if segments is not None else legacy if legacy is not None else []


def _avatar_uin(url: str) -> str:
    """The QQ number inside a qlogo avatar URL (`nk=` or `dst_uin=`), as forwarded nodes carry no sender id."""
    try:
        query = parse_qs(urlsplit(url).query)
    except ValueError:
        return ""
    for key in ("nk", "dst_uin"):
        for value in query.get(key, ()):
            if _NUMBER.fullmatch(value):
                return value
    return ""


def _forwarded_node(item: object) -> ForwardNode:
    if not isinstance(item, Mapping):
        raise _Malformed("node")
    avatar = item.get("avatar_url")
    return ForwardNode(
        # The avatar is only a hint at the sender, so a bad one costs the id, not the node.
        sender_id=_avatar_uin(avatar) if isinstance(avatar, str) else "",
        sender_name=_str(item, "sender_name"),
        message=_decode(_items(message_segments(dict(item))), 1),
        time=_int(item, "time"),
        message_id=_number_id(item, "message_seq"),
    )


def decode_forwarded(data: object) -> tuple[ForwardNode, ...]:
    """The nodes of a get_forwarded_messages answer `{messages:[…]}` (a bare list is read too); never raises."""
    items = data.get("messages") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        return ()
    nodes: list[ForwardNode] = []
    for item in items:
        try:
            nodes.append(_forwarded_node(item))
        except (_Malformed, ValueError, TypeError):
            continue  # one unreadable node should not cost the others
    return tuple(nodes)


# --- encoding ------------------------------------------------------------------------------------


def _text_segment(text: str) -> _Json:
    return {"type": "text", "data": {"text": text}}


def _base64_uri(data: str) -> str:
    if data.startswith("base64://"):
        return data
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]  # a data: URI's payload is already the base64 text
    return "base64://" + data


def _uri(url: str, path: str, base64: str) -> str:
    """A URL, then a local path, then inline data; Milky cannot send a received resource_id back."""
    if url:
        return url
    if path:
        return _file_uri(path)
    if base64:
        return _base64_uri(base64)
    return ""


def _enc_at(seg: At) -> _Json | None:
    user_id = _as_int(seg.target)
    if user_id is not None:
        return {"type": "mention", "data": {"user_id": user_id}}
    # Not a QQ number (an id from another platform): the name still tells readers who was meant.
    name = seg.display or seg.target
    if not name:
        return None
    return _text_segment(name if name.startswith("@") else f"@{name}")


def _enc_face(seg: Face) -> _Json:
    if seg.id:
        return {"type": "face", "data": {"face_id": seg.id, "is_large": seg.big}}
    # A name-only face (from another protocol) can only be said in words.
    return _text_segment(f"[表情:{seg.name}]" if seg.name else "[表情]")


def _enc_image(seg: Image) -> _Json | None:
    uri = _uri(seg.url, seg.path, seg.base64)
    if not uri:
        return None
    return {"type": "image", "data": {"uri": uri, "sub_type": "sticker" if seg.emoji else "normal"}}


def _media(kind: str, uri: str) -> _Json | None:
    return {"type": kind, "data": {"uri": uri}} if uri else None


def _enc_forward(seg: Forward) -> _Json | None:
    messages: list[_Json] = []
    for node in seg.nodes:
        segments = encode_segments(node.message)
        if not segments:
            continue  # a by-reference node (message_id only) or empty content cannot be rebuilt in Milky
        user_id = _as_int(node.sender_id) or 0
        sender_name = node.sender_name or node.sender_id or str(user_id)
        messages.append({"user_id": user_id, "sender_name": sender_name, "segments": segments})
    if not messages:
        return None  # by id only: Milky has no way to send a forward it did not build
    data: _Json = {"messages": messages}
    if seg.title:
        data["title"] = seg.title
    preview = [line for line in seg.preview if line][:_MAX_PREVIEW]
    if preview:
        data["preview"] = preview
    if seg.summary:
        data["summary"] = seg.summary
    return {"type": "forward", "data": data}


def _enc_card(seg: Card) -> _Json | None:
    # An app (ark) card is JSON too; Milky cannot send XML, so an XML card is dropped.
    if seg.kind in ("json", "app") and seg.content:
        return {"type": "light_app", "data": {"json_payload": seg.content}}
    return None


def _enc_raw(seg: Raw) -> _Json | None:
    # Only our own protocol's segments mean anything to a Milky implementation.
    if seg.protocol != PROTOCOL or not seg.type:
        return None
    return {"type": seg.type, "data": dict(seg.data)}


_ENCODERS: dict[type, Callable[[Any], _Json | None]] = {
    # An empty text segment adds nothing and implementations may reject it.
    Text: lambda seg: _text_segment(seg.text) if seg.text else None,
    At: _enc_at,
    AtAll: lambda seg: {"type": "mention_all", "data": {}},
    Face: _enc_face,
    Image: _enc_image,
    Voice: lambda seg: _media("record", _uri(seg.url, seg.path, seg.base64)),
    Video: lambda seg: _media("video", _uri(seg.url, seg.path, "")),
    Forward: _enc_forward,
    Card: _enc_card,
    Markdown: lambda seg: _text_segment(seg.content) if seg.content else None,
    # Store stickers need a key and package id the model does not keep, so say what it was instead.
    MarketFace: lambda seg: _text_segment(seg.name or "[表情]"),
    Raw: _enc_raw,
    # File (upload APIs), Poke (nudge APIs), Dice, Rps and Music have no outgoing segment: dropped.
}


def encode_segments(message: Message) -> list[dict[str, Any]]:
    """The outgoing segment list for `message`: a reply goes first, segments Milky cannot send are dropped."""
    out: list[dict[str, Any]] = []
    reply: _Json | None = None
    for seg in message:
        if isinstance(seg, Quote):
            # QQ honours one reply and shows it above the content, so only the first usable quote counts.
            seq = _as_int(seg.message_id)
            if reply is None and seq is not None:
                reply = {"type": "reply", "data": {"message_seq": seq}}
            continue
        encoder = _ENCODERS.get(type(seg))
        element = encoder(seg) if encoder is not None else None
        if element is not None:
            out.append(element)
    return [reply, *out] if reply is not None else out
