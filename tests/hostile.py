"""The hostile-input corpus every protocol's tests send through its real listener or link.

Table-driven: generic frames (deep nesting, huge, invalid UTF-8, truncated, binary, not objects)
and, for a real event of each kind, the same event with every field replaced by wrong types.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

from adapters.frames import MAX_BODY, MAX_FRAME
from core.event import Event

# Values of every JSON type, plus the awkward ones: each replaces a field whose type differs.
WRONG_VALUES: tuple[Any, ...] = (
    None,
    True,
    -1,
    2**70,
    1.5e308,
    "",
    "\u0000\u202e\x1b[31m",
    [],
    [1, "x"],
    {},
    {"a": [{}]},
)


def generic_frames(max_size: int = MAX_FRAME) -> list[tuple[str, str | bytes]]:
    """(name, frame) pairs that no protocol may choke on."""
    return [
        ("deep array", "[" * 100_000 + "]" * 100_000),
        ("deep object", '{"a":' * 50_000 + "1" + "}" * 50_000),
        ("deep inside a valid event", '{"type":"x","data":' + "[" * 5_000 + "]" * 5_000 + "}"),
        ("over the size cap", '{"pad":"' + "x" * (max_size + 10) + '"}'),
        ("invalid UTF-8", b'{"type":"\xff\xfe","data":{"text":"\xc3\x28"}}'),
        ("lone surrogate escape", '{"type":"\\ud800","data":{}}'),
        ("truncated", '{"type":"FriendMessage","data":{"sender":{"id":1'),
        ("binary garbage", bytes(range(256))),
        ("empty", ""),
        ("null", "null"),
        ("a number", "12345"),
        ("a string", '"hello"'),
        ("an array", "[1,2,3]"),
        ("NaN", '{"a":NaN}'),
        ("huge number", '{"a":' + "9" * 5000 + "}"),
    ]


def body_frames() -> list[tuple[str, str | bytes]]:
    """Generic frames sized for webhook bodies and SSE events."""
    return generic_frames(MAX_BODY)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*path, index)
            yield from _paths(item, (*path, index))


def _replaced(event: Any, path: tuple[Any, ...], value: Any) -> Any:
    mutated = copy.deepcopy(event)
    where = mutated
    for part in path[:-1]:
        where = where[part]
    where[path[-1]] = value
    return mutated


def wrong_types(event: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`event` with each field, at every depth, replaced by each value of another JSON type."""
    for path in _paths(event):
        original: Any = event
        for part in path:
            original = original[part]
        for value in WRONG_VALUES:
            if type(value) is type(original) and value == original:
                continue
            yield f"{'.'.join(map(str, path))}={json.dumps(value)[:20]}", _replaced(event, path, value)


WS_UPGRADE = [
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
]


async def raw_request(
    port: int, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"", timeout: float = 10.0
) -> int:
    """Send one HTTP/1.1 request whose header bytes are exactly `headers` (aiohttp's client would refuse
    or re-encode bytes such as 0xFF); the status the server answered. Used for hostile-header tests."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in headers]
        if not any(name.lower() == b"connection" for name, _ in headers):
            lines.append(b"Connection: close")
        chunked = any(name.lower() == b"transfer-encoding" for name, _ in headers)
        if (body or method == "POST") and not chunked:
            lines.append(b"Content-Length: %d" % len(body))
        with contextlib.suppress(ConnectionError):  # a server refusing a large body may close before reading it
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        return int(status_line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


BUG = "a bug in one handler"


def fail_once(monkeypatch: Any, owner: object, name: str) -> None:
    """Make `owner.name` raise RuntimeError(BUG) on its first call and work normally after: a handler bug."""
    real = getattr(owner, name)
    calls = 0

    def first_call_fails() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError(BUG)

    if asyncio.iscoroutinefunction(real):

        async def failing_async(*args: Any, **kwargs: Any) -> Any:
            first_call_fails()
            return await real(*args, **kwargs)

        monkeypatch.setattr(owner, name, failing_async)
    else:

        def failing(*args: Any, **kwargs: Any) -> Any:
            first_call_fails()
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, failing)


class Sink:
    """An adapter's event sink that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


# Hypothesis strategies for the codec fuzz tests: any JSON value, and small ones to nest inside events.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
small_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
