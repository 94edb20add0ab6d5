"""Tolerant readers for fields of wire JSON, shared by the codecs: missing or null gives the default."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from core.errors import escape_control
from core.message import Raw, Segment

# QQ numbers, message ids and sequences; ids are often signed, so a minus sign still counts.
NUMBER = re.compile(r"-?[0-9]{1,19}")
# An account or group number: positive, as QQ hands them out.
QQ_NUMBER = re.compile(r"[1-9][0-9]{0,18}")

Data: TypeAlias = Mapping[str, Any]


class Malformed(Exception):
    """A field's value cannot be turned into the model's field (the element is kept as Raw)."""


def text(data: Data, key: str) -> str:
    """A string field; implementations send ids and sizes as numbers too, so integers become text."""
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Malformed(key)


def number_id(data: Data, key: str) -> str:
    """A QQ number or sequence as text: anything but digits means the element is not what it claims."""
    value = text(data, key)
    if value and not NUMBER.fullmatch(value):
        raise Malformed(key)
    return value


def qq_number(data: Data, key: str) -> str:
    """A user or group number that an event's identity rests on: raises Malformed unless it is one."""
    value = text(data, key)
    if not QQ_NUMBER.fullmatch(value):
        raise Malformed(key)
    return value


def integer(data: Data, key: str) -> int:
    """Sizes, lengths, durations: informational, so a bad one gives 0 rather than losing the element."""
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        return int(value)
    return 0


def mapping(data: Data, key: str) -> Data:
    """A nested object field."""
    value = data.get(key)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    raise Malformed(key)


def shown(value: object, size: int = 100) -> str:
    """A wire value for a log line: its text, cut to `size` characters, control characters escaped."""
    text = value if isinstance(value, str) else repr(value)
    return escape_control(text[:size] + ("…" if len(text) > size else ""))


SegmentDecoder = Callable[[Data, int], Segment]


def decode_typed(el: object, depth: int, protocol: str, decoders: Mapping[str, SegmentDecoder]) -> Segment:
    """One `{"type": T, "data": {...}}` segment (OneBot, Milky) through the codec's table.

    Never raises: an unknown type, or a segment whose fields do not fit, is kept whole as Raw so it
    is not lost (and goes back out unchanged to the same protocol).
    """
    if not isinstance(el, Mapping) or not isinstance(el.get("type"), str):
        return Raw(protocol, "", {"value": repr(el)})
    kind: str = el["type"]
    data = el.get("data")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return Raw(protocol, kind, {"value": data})
    decoder = decoders.get(kind)
    if decoder is None:
        return Raw(protocol, kind, dict(data))
    try:
        return decoder(data, depth)
    except (Malformed, ValueError, TypeError):
        return Raw(protocol, kind, dict(data))


def file_uri(path: str) -> str:
    """A local path as the `file://` URI the implementations accept; a URI stays as it is."""
    if path.startswith("file://"):
        return path
    # Left unquoted: LLOneBot escapes `%` itself before fileURLToPath, so percent-encoding would break
    # non-ASCII names there, while NapCat and Milky decode either form. "/tmp/a" → file:///tmp/a, C:\a → file:///C:/a.
    return "file:///" + Path(os.path.abspath(path)).as_posix().lstrip("/")
