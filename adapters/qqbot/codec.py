"""Official QQ bot wire <-> core: gateway payload fields, message events, webhook validation, reply bodies."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from core.event import ChatType, MessageEvent
from core.message import Image, Message, Quote, Segment, Text, Voice, describe

GROUP_MESSAGE = "GROUP_AT_MESSAGE_CREATE"
# Every group message, for bots granted it; addressed to the bot only when a mention says `is_you`.
GROUP_ALL_MESSAGE = "GROUP_MESSAGE_CREATE"
PRIVATE_MESSAGE = "C2C_MESSAGE_CREATE"
MESSAGE_EVENTS = (GROUP_MESSAGE, GROUP_ALL_MESSAGE, PRIVATE_MESSAGE)
# A message sent as a reply: `msg_elements` holds the quoted message, `message_scene.ext` its `ref_msg_idx`.
QUOTE_MESSAGE_TYPE = 103
# Mention tokens in `content`: `<@!id>` / `<@id>` (guild style), `<qqbot-at-user id="…" />`, and @everyone.
# The one space after a token goes with it, so removing it leaves no double space (and no other spacing changes).
_MENTION = re.compile(
    r"(?:<@!?([^<>\s]{1,128})>|<qqbot-at-user\s+id=\"([^\"<>]{1,128})\"\s*/?>|<qqbot-at-everyone\s*/?>)( ?)"
)
MAX_SEQ = 2**63 - 1  # `s` is a 64-bit counter on the platform; anything else is not a sequence number
DEFAULT_HEARTBEAT = 45.0
MIN_HEARTBEAT, MAX_HEARTBEAT = 0.1, 60.0

# Links must be registered with the platform; anything that looks like one is made unlinkable.
_URL = re.compile(r"(?:https?://)?(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\S*")


def text(value: object) -> str:
    """`value` when it is a string, else "" (wire fields may be missing or of any type)."""
    return value if isinstance(value, str) else ""


def integer(value: object) -> int | None:
    """`value` when it is a whole number (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def obj(value: object) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def sequence(payload: dict[str, Any]) -> int | None:
    """The payload's `s` when it is a usable sequence number."""
    s = integer(payload.get("s"))
    return s if s is not None and 0 <= s <= MAX_SEQ else None


def heartbeat_seconds(hello: dict[str, Any]) -> float:
    """The Hello's heartbeat interval in seconds, kept within sane bounds (45 s when missing)."""
    ms = obj(hello.get("d")).get("heartbeat_interval")
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
        return DEFAULT_HEARTBEAT
    return min(MAX_HEARTBEAT, max(MIN_HEARTBEAT, float(ms) / 1000))


def session_id(ready: dict[str, Any]) -> str:
    """READY's session id, "" when it is missing or malformed (the shard then identifies next time)."""
    return text(obj(ready.get("d")).get("session_id"))


@dataclass(frozen=True, slots=True)
class Validation:
    """An op 13 callback-URL validation: what the answer must sign."""

    plain_token: str
    event_ts: str


def validation(payload: dict[str, Any]) -> Validation | None:
    """The op 13 request's fields, or None when they are not strings."""
    d = obj(payload.get("d"))
    plain_token, event_ts = d.get("plain_token"), d.get("event_ts")
    if not isinstance(plain_token, str) or not isinstance(event_ts, str):
        return None
    return Validation(plain_token, event_ts)


def decode_message(payload: dict[str, Any], adapter: str, self_id: str) -> MessageEvent | None:
    """A group message (@-message, or any message for bots allowed them) or private (C2C) message as a
    MessageEvent; None for anything else. A quoted message (`msg_elements`) comes first as a Quote with its
    content; mention tokens are removed or said as "@name".

    Fields the bot relies on must have their documented types (ids non-empty strings, content a
    string); otherwise the event is dropped. Never raises.
    """
    kind = payload.get("t")
    if kind not in MESSAGE_EVENTS:
        return None
    data = payload.get("d")
    if not isinstance(data, dict):
        return None
    author = obj(data.get("author"))
    group = kind != PRIVATE_MESSAGE
    user = text(author.get("member_openid" if group else "user_openid")) or text(author.get("id"))
    msg_id = text(data.get("id"))
    group_id = text(data.get("group_openid")) if group else ""
    content = data.get("content", "")
    if not user or not msg_id or (group and not group_id) or not isinstance(content, str):
        return None
    mentions = _mentions(data.get("mentions"))
    segments: list[Segment] = []
    quote = _quote(data, mentions)
    if quote is not None:
        segments.append(quote)
    segments.extend(_content(content, data.get("attachments"), mentions))
    to_me = kind != GROUP_ALL_MESSAGE or any(is_you for _, is_you in mentions.values())
    return MessageEvent(
        adapter=adapter,
        platform="qqbot",
        self_id=self_id,
        chat_type=ChatType.GROUP if group else ChatType.PRIVATE,
        user_id=user,
        group_id=group_id,
        message=tuple(segments),
        message_id=msg_id,
        to_me=to_me,
        raw=data,
    )


def _mentions(value: object) -> dict[str, tuple[str, bool]]:
    """Mentioned ids (id, member_openid, user_openid) → (username, whether it is the bot)."""
    found: dict[str, tuple[str, bool]] = {}
    for mention in value if isinstance(value, list) else ():
        mention = obj(mention)
        entry = (text(mention.get("username")), mention.get("is_you") is True)
        for key in ("id", "member_openid", "user_openid"):
            if text(mention.get(key)):
                found[text(mention.get(key))] = entry
    return found


def _plain(content: str, mentions: dict[str, tuple[str, bool]]) -> str:
    """`content` with mention tokens removed, or said as "@name" when the name is known (never for the bot:
    addressing it is what `to_me` records)."""

    def name(match: re.Match[str]) -> str:
        target = match.group(1) or match.group(2)
        username, is_you = mentions.get(target, ("", False)) if target else ("", False)
        return f"@{username}{match.group(3)}" if username and not is_you else ""

    # The platform leaves a space where the @bot was.
    return _MENTION.sub(name, content).strip()


def _content(content: str, attachments: object, mentions: dict[str, tuple[str, bool]]) -> list[Segment]:
    segments: list[Segment] = []
    plain = _plain(content, mentions)
    if plain:
        segments.append(Text(plain))
    for attachment in attachments if isinstance(attachments, list) else ():
        media = _attachment(obj(attachment))
        if media is not None:
            segments.append(media)
    return segments


def _ext(data: dict[str, Any], key: str) -> str:
    """A `key=value` entry of `message_scene.ext` (a list of such strings)."""
    ext = obj(data.get("message_scene")).get("ext")
    for entry in ext if isinstance(ext, list) else ():
        name, sep, value = text(entry).partition("=")
        if sep and name == key:
            return value
    return ""


def _quote(data: dict[str, Any], mentions: dict[str, tuple[str, bool]]) -> Quote | None:
    """The message this one replies to, from `msg_elements`: its text and pictures, for the model's context."""
    elements = data.get("msg_elements")
    if not isinstance(elements, list):
        return None
    ref = _ext(data, "ref_msg_idx")
    for element in elements:
        element = obj(element)
        idx = text(element.get("msg_idx"))
        if integer(element.get("message_type")) != QUOTE_MESSAGE_TYPE and not (ref and idx == ref):
            continue
        if ref and idx and idx != ref:
            continue  # an element of something else (nonebot checks the index too)
        origin = _content(text(element.get("content")), element.get("attachments"), mentions)
        if not origin:
            continue
        author = obj(element.get("author"))
        sender = text(author.get("member_openid")) or text(author.get("user_openid")) or text(author.get("id"))
        # The platform gives no message id for it, only its index; the index stands in as the id.
        return Quote(idx or ref, sender_id=sender, origin=tuple(origin))
    return None


def _attachment(attachment: dict[str, Any]) -> Image | Voice | None:
    """A picture or a voice attachment; None for other kinds (files, videos) and for one without a URL."""
    kind = text(attachment.get("content_type"))
    if kind.startswith("image"):
        url = _https(text(attachment.get("url")))
        return Image(url=url) if url else None
    if kind == "voice" or kind.startswith("audio"):
        # `voice_wav_url` is the platform's WAV rendering, readable without a silk decoder; `url` is the silk itself.
        url = _https(text(attachment.get("voice_wav_url"))) or _https(text(attachment.get("url")))
        return Voice(url=url) if url else None
    return None


def _https(url: str) -> str:
    """`url` with a scheme: attachment URLs sometimes come without one, or protocol-relative (`//host/x`)."""
    url = url.strip()
    if not url or url.startswith(("http://", "https://")):
        return url
    return "https://" + url.lstrip("/")


def unlinkable(value: str) -> str:
    """`value` with URLs and bare domains broken (scheme removed, dots made full-width)."""
    return _URL.sub(lambda m: re.sub(r"^https?://", "", m.group(0)).replace(".", "。"), value)


def text_reply(message: Message, msg_id: str, msg_seq: int) -> dict[str, Any]:
    """The body of a passive text reply (msg_type 0) to `msg_id`."""
    return {"msg_id": msg_id, "msg_seq": msg_seq, "msg_type": 0, "content": unlinkable(describe(message))}


def media_reply(file_info: str, msg_id: str, msg_seq: int) -> dict[str, Any]:
    """The body of a passive media reply (msg_type 7) for an uploaded file; content must be one space."""
    return {"msg_id": msg_id, "msg_seq": msg_seq, "msg_type": 7, "content": " ", "media": {"file_info": file_info}}
