"""Server-sent events read from an aiohttp response: one `data` string per event (multi-line data joined)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Each event's data; `data:` lines of one event are joined with newlines, comments (`:`) skipped."""
    lines: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)
