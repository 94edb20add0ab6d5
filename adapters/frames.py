"""Wire frames turned into JSON objects safely: size cap, nesting bound, any encoding, never raising."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from core.errors import escape_control

# Events and action answers are a few KB; 4 MB leaves room for a long forwarded chat log.
MAX_FRAME = 4 * 1024 * 1024
# Webhook and SSE events: 1 MB is plenty, and an unauthenticated client cannot make the bot buffer more.
MAX_BODY = 1024 * 1024
# Real events nest a handful of levels (a forward inside a forward inside a message); far below the
# depth at which json.loads or the codecs' recursion would fail.
MAX_DEPTH = 100
PREVIEW = 200

_SPECIAL_TEXT = re.compile(r'[\[\]{}"\\]')
_SPECIAL_BYTES = re.compile(rb'[\[\]{}"\\]')
_OPEN: frozenset[Any] = frozenset("[{")
_OPEN_BYTES: frozenset[Any] = frozenset(b"[{")


def nesting_depth_exceeds(data: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text opens more than `limit` arrays/objects inside each other (strings skipped).

    Linear in the number of brackets, quotes and backslashes; frames with few brackets return at
    once without a scan.
    """
    tokens: Any
    quote: Any
    backslash: Any
    if isinstance(data, bytes):
        if data.count(b"[") + data.count(b"{") <= limit:
            return False
        tokens, opening, quote, backslash = _SPECIAL_BYTES.finditer(data), _OPEN_BYTES, ord('"'), ord("\\")
    else:
        if data.count("[") + data.count("{") <= limit:
            return False
        tokens, opening, quote, backslash = _SPECIAL_TEXT.finditer(data), _OPEN, '"', "\\"
    depth = 0
    in_string = False
    skip_at = -1  # the position of a character escaped by a backslash
    for match in tokens:
        position = match.start()
        if position == skip_at:
            continue
        c = data[position]  # an int for bytes, a one-character str for text
        if in_string:
            if c == backslash:
                skip_at = position + 1
            elif c == quote:
                in_string = False
        elif c == quote:
            in_string = True
        elif c in opening:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1  # a closing bracket (a stray one only makes the text malformed)
    return False


def preview(data: str | bytes | Mapping[str, Any], size: int = PREVIEW) -> str:
    """The start of a frame for a log line: readable text (Chinese included), control characters escaped."""
    if isinstance(data, Mapping):
        text = repr(data)
    elif isinstance(data, bytes):
        text = data[: size * 4].decode("utf-8", errors="replace")
    else:
        text = data
    return escape_control(text[:size]) + ("…" if len(data) > size else "")


def parse_frame(log: Any, data: str | bytes, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    """A wire frame as a JSON object, or None: an oversized, too deeply nested, badly encoded or
    malformed frame is logged with its start and dropped. Never raises."""
    try:
        if len(data) > limit:
            log.warning("dropped a frame of {} bytes (the limit is {})", len(data), limit)
            return None
        if nesting_depth_exceeds(data):
            log.warning("dropped a frame nested more than {} levels deep: {}", MAX_DEPTH, preview(data))
            return None
        frame = json.loads(data)
    except (ValueError, RecursionError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        log.warning("dropped a malformed frame ({} bytes, {}): {}", len(data), type(exc).__name__, preview(data))
        return None
    if not isinstance(frame, dict):
        log.warning("dropped a frame that is not a JSON object: {}", preview(data))
        return None
    return frame


_KIND_FIELDS = ("type", "post_type", "event_type", "t", "op", "action")


def event_kind(frame: Mapping[str, Any]) -> str:
    """What a frame says it is (its type, post_type, t, op …), for log lines; "?" when it says nothing."""
    for where in (frame, frame.get("data"), frame.get("body"), frame.get("d")):
        if isinstance(where, Mapping):
            for name in _KIND_FIELDS:
                value = where.get(name)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    return f"{name}={str(value)[:40]}"
    return "?"
