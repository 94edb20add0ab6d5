"""v2's HTTP API bodies: a reply's segments become `message[]` / `image[]` / `voice[]` as v2 sent them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from adapters.media import data_uri
from core.message import Image, Message, Text, Voice, describe

SUCCESS, FAILED, DONE = "SUCCESS", "FAILED", "DONE"  # v2's `result` values


@dataclass(slots=True)
class Result:
    """One request's answer so far, in v2's shape."""

    message: list[str] = field(default_factory=list)
    voice: list[str] = field(default_factory=list)
    image: list[str] = field(default_factory=list)

    def body(self, result: str) -> str:
        """v2's JSON: `{"result", "message", "voice", "image"}`."""
        return json.dumps(
            {"result": result, "message": self.message, "voice": self.voice, "image": self.image}, ensure_ascii=False
        )

    def take(self) -> Result:
        """Everything collected so far, leaving this empty (v2 hands each part out once when polled)."""
        taken = Result(self.message, self.voice, self.image)
        self.message, self.voice, self.image = [], [], []
        return taken


def failed(text: str) -> str:
    """v2's error shape: `result` FAILED with the reason as the only message."""
    return Result(message=[text]).body(FAILED)


async def collect(result: Result, message: Message) -> None:
    """Add a reply's segments to `result`: text to `message[]`, images and voices as data URIs."""
    for seg in message:
        if isinstance(seg, Image):
            found = await data_uri(seg, "image/png")
            if found:
                result.image.append(found)
        elif isinstance(seg, Voice):
            found = await data_uri(seg, "audio/mpeg")
            if found:
                result.voice.append(found)
        elif isinstance(seg, Text):
            if seg.text:
                result.message.append(seg.text)
        else:
            text = describe((seg,))
            if text:
                result.message.append(text)
