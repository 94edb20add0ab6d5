"""Pictures and voices as data URIs, for platforms that hand them to a client in JSON (HTTP API, chat page)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from core.message import Image, Voice


async def data_uri(media: Image | Voice, mime: str) -> str:
    """`data:<mime>;base64,…` from the media's base64 data or file; else its URL as it is ("" without one)."""
    if media.base64:
        data = media.base64.removeprefix("base64://")
        return data if data.startswith("data:") else f"data:{mime};base64,{data}"
    if media.path:
        raw = await asyncio.to_thread(Path(media.path).read_bytes)
        return f"data:{mime};base64,{base64.b64encode(raw).decode()}"
    return media.url
