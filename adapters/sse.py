"""Server-sent events read from an aiohttp response: one `data` string per event, capped, never raising on bad bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from loguru import logger

from adapters.frames import MAX_BODY, preview


async def sse_data(content: aiohttp.StreamReader, limit: int = MAX_BODY, log: Any = logger) -> AsyncIterator[str]:
    """Each event's data; `data:` lines of one event are joined with newlines, comments (`:`) skipped.

    An event whose data grows past `limit` bytes, or that is not UTF-8, is logged and dropped
    while the stream goes on; no line is buffered past the limit either.
    """
    pending = bytearray()  # received bytes not yet split into lines
    data = bytearray()  # the current event's data so far
    has_data = False
    oversized = False  # the current event went over the limit: skip it to its end
    in_long_line = False  # discarding the rest of a line longer than the limit
    async for chunk in content.iter_any():
        pending += chunk
        start = 0  # lines are cut by position and the buffer shortened once per chunk: linear in its size
        while (end := pending.find(b"\n", start)) >= 0:
            line = bytes(pending[start:end])
            start = end + 1
            if in_long_line:
                in_long_line = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends the event
                if oversized:
                    log.warning("dropped a server-sent event over {} bytes", limit)
                elif has_data:
                    text = _decoded(data, log)
                    if text is not None:
                        yield text
                data.clear()
                has_data = oversized = False
                continue
            name, _, value = line.partition(b":")
            if name != b"data" or oversized:
                continue  # comments (`: ping`), event names and ids carry nothing we use
            if has_data:
                data += b"\n"
            data += value[1:] if value.startswith(b" ") else value
            has_data = True
            if len(data) > limit:
                data.clear()
                has_data, oversized = False, True
        del pending[:start]
        if len(pending) > limit:
            # One line longer than an event may be: drop it without waiting for its end in memory.
            pending.clear()
            data.clear()
            has_data, oversized, in_long_line = False, True, True
    if has_data and not oversized:
        text = _decoded(data, log)
        if text is not None:
            yield text


def _decoded(data: bytearray, log: Any) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("dropped a server-sent event that is not UTF-8: {}", preview(bytes(data)))
        return None
