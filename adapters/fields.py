"""Tolerant readers for fields of wire JSON, shared by the codecs: missing or null gives the default."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeAlias

# QQ numbers, message ids and sequences; ids are often signed, so a minus sign still counts.
NUMBER = re.compile(r"-?[0-9]{1,19}")

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
