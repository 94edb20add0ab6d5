"""The one message model: frozen segments every protocol translates to and from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class Text:
    """Plain text."""

    text: str


@dataclass(frozen=True, slots=True)
class At:
    """A mention of one user; `display` is the shown name when the platform gives it."""

    target: str
    display: str = ""


@dataclass(frozen=True, slots=True)
class AtAll:
    """A mention of everybody in the group."""


@dataclass(frozen=True, slots=True)
class Face:
    """A built-in QQ emoji by id; `big` marks super/large faces."""

    id: str
    name: str = ""
    big: bool = False


@dataclass(frozen=True, slots=True)
class Image:
    """An image by platform id, URL, local path or base64 data (first non-empty wins on send)."""

    id: str = ""
    url: str = ""
    path: str = ""
    base64: str = ""
    flash: bool = False
    emoji: bool = False
    width: int = 0
    height: int = 0
    size: int = 0


@dataclass(frozen=True, slots=True)
class Voice:
    """A voice message (record)."""

    id: str = ""
    url: str = ""
    path: str = ""
    base64: str = ""
    length: int = 0


@dataclass(frozen=True, slots=True)
class Video:
    """A short video."""

    id: str = ""
    url: str = ""
    path: str = ""
    name: str = ""
    size: int = 0
    md5: str = ""
    format: str = ""
    thumbnail_url: str = ""


@dataclass(frozen=True, slots=True)
class File:
    """A file shared in a chat."""

    id: str = ""
    name: str = ""
    size: int = 0
    url: str = ""


@dataclass(frozen=True, slots=True)
class Quote:
    """A reference to an earlier message; `origin` is its content when the platform sends it."""

    message_id: str
    sender_id: str = ""
    group_id: str = ""
    target_id: str = ""
    origin: Message = ()


@dataclass(frozen=True, slots=True)
class ForwardNode:
    """One node of a forward message: given by content, or by reference to a message id."""

    sender_id: str = ""
    sender_name: str = ""
    message: Message = ()
    time: int = 0
    message_id: str = ""
    ref_target: str = ""


@dataclass(frozen=True, slots=True)
class Forward:
    """A merged forward message (合并转发); `id` is the platform's handle when nodes are not inlined."""

    nodes: tuple[ForwardNode, ...] = ()
    id: str = ""
    title: str = ""
    brief: str = ""
    source: str = ""
    summary: str = ""
    preview: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Card:
    """A rich card: JSON, XML or an app (ark) message, kept as its raw content."""

    kind: Literal["json", "xml", "app"]
    content: str


@dataclass(frozen=True, slots=True)
class Poke:
    """A poke-like action element (戳一戳, 比心, ...); `name` is the platform's kind word."""

    name: str = "Poke"
    id: str = ""


@dataclass(frozen=True, slots=True)
class Dice:
    """A dice roll result."""

    value: int = 0


@dataclass(frozen=True, slots=True)
class Rps:
    """A rock-paper-scissors result."""

    value: int = 0


@dataclass(frozen=True, slots=True)
class MarketFace:
    """A store sticker (商城表情); receive and forward only on most platforms."""

    id: str = ""
    name: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class Music:
    """A music share card."""

    kind: str = ""
    title: str = ""
    summary: str = ""
    jump_url: str = ""
    picture_url: str = ""
    music_url: str = ""
    brief: str = ""


@dataclass(frozen=True, slots=True)
class Markdown:
    """Markdown content (official bot API, some NTQQ implementations)."""

    content: str


@dataclass(frozen=True, slots=True)
class Raw:
    """An element the model has no type for, kept whole so nothing is lost."""

    protocol: str
    type: str
    data: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)


Segment: TypeAlias = (
    Text
    | At
    | AtAll
    | Face
    | Image
    | Voice
    | Video
    | File
    | Quote
    | Forward
    | Card
    | Poke
    | Dice
    | Rps
    | MarketFace
    | Music
    | Markdown
    | Raw
)
Message: TypeAlias = tuple[Segment, ...]

FORWARD_NODES_SHOWN = 30
_PLACEHOLDERS: dict[type, str] = {
    Image: "[图片]",
    Voice: "[语音]",
    Video: "[视频]",
    File: "[文件]",
    Forward: "[聊天记录]",
    Card: "[卡片]",
    Poke: "[戳一戳]",
    Dice: "[骰子]",
    Rps: "[猜拳]",
    MarketFace: "[表情]",
    Music: "[音乐]",
    AtAll: "@全体成员",
}


def describe(msg: Iterable[Segment]) -> str:
    """A readable one-string rendering (text, @names, media placeholders) for logs and the model."""
    out: list[str] = []
    for seg in msg:
        if isinstance(seg, Text):
            out.append(seg.text)
        elif isinstance(seg, At):
            out.append(seg.display if seg.display.startswith("@") else f"@{seg.display or seg.target}")
        elif isinstance(seg, Face):
            out.append(f"[表情:{seg.name}]" if seg.name else "[表情]")
        elif isinstance(seg, MarketFace):
            out.append(seg.name or "[表情]")
        elif isinstance(seg, Markdown):
            out.append(seg.content)
        elif isinstance(seg, Quote | Raw):
            continue
        elif isinstance(seg, Forward) and seg.nodes:
            # a forwarded chat log is content the user wants read ("summarise this"), within reason
            lines = [f"{n.sender_name or n.sender_id}: {describe(n.message)}" for n in seg.nodes[:FORWARD_NODES_SHOWN]]
            out.append("[聊天记录]\n" + "\n".join(lines) + "\n[聊天记录结束]")
        else:
            out.append(_PLACEHOLDERS.get(type(seg), ""))
    return "".join(out)
