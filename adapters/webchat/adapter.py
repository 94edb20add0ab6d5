"""The console's chat page as a platform: messages typed in the browser go through the same pipeline as QQ.

The person at the console owns the bot (they logged in with `[web] password`), so they are its
manager here, and they share the terminal chat's history (`python bot.py --console`): both are the
owner trying the bot. Replies, live drafts of a streamed answer and "answer finished" go to every
open chat page as server-sent events.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from adapters.base import Adapter, EventSink
from adapters.media import data_uri
from core.event import ChatType, MessageEvent, Target
from core.message import Image, Message, Text, Voice, describe

OWNER = "console"  # the same user as the terminal chat
FOLLOWER_QUEUE = 256  # events held for one slow page; the oldest go first
MAX_PAGES = 16  # open chat pages at once


class WebChatAdapter(Adapter):
    """`web`: not a QQ link, so it never counts for health or for "every platform stopped"."""

    protocol = "web"
    max_text_length = 100_000
    counts_for_health = False
    wants_drafts = True
    voice_format = "mp3"  # the chat page plays voices in an <audio> element

    def __init__(self, instance: str, settings: Any, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.managers = frozenset({OWNER})
        self._ids = itertools.count(1)
        self._pages: set[asyncio.Queue[str]] = set()

    async def start(self) -> None:
        self._link_up()

    async def stop(self) -> None:
        """End every open page's event stream (an empty text tells its handler to finish)."""
        for queue in self._pages:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait("")
        await super().stop()

    # --- from the page --------------------------------------------------------------------------

    async def say(self, text: str) -> str:
        """A message typed on the chat page; returns its id (the page matches the answer's events to it)."""
        message_id = f"web-{int(time.time())}-{next(self._ids)}"
        await self.sink(
            MessageEvent(
                adapter=self.instance,
                platform="console",
                self_id="bot",
                chat_type=ChatType.PRIVATE,
                user_id=OWNER,
                message=(Text(text),),
                message_id=message_id,
                to_me=True,
                sender_name="控制台",
                time=time.time(),
            )
        )
        return message_id

    def follow(self) -> asyncio.Queue[str] | None:
        """A queue of server-sent event texts for one open page; None when too many are open."""
        if len(self._pages) >= MAX_PAGES:
            return None
        queue: asyncio.Queue[str] = asyncio.Queue(FOLLOWER_QUEUE)
        self._pages.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[str]) -> None:
        self._pages.discard(queue)

    # --- to the page ----------------------------------------------------------------------------

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        event = f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        for queue in self._pages:
            if queue.full():
                queue.get_nowait()  # a page that stopped reading loses its oldest events, not the bot's time
            queue.put_nowait(event)

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        images = [uri for seg in message if isinstance(seg, Image) and (uri := await _media_uri(seg, "image/png"))]
        voices = [uri for seg in message if isinstance(seg, Voice) and (uri := await _media_uri(seg, "audio/mpeg"))]
        text = describe(tuple(seg for seg in message if not isinstance(seg, Image | Voice)))
        self._publish("message", {"reply_to": target.message_id, "text": text, "images": images, "voices": voices})
        return None

    async def draft(self, event: MessageEvent, text: str) -> None:
        self._publish("draft", {"reply_to": event.message_id, "text": text})

    def answered(self, event: MessageEvent) -> None:
        self._publish("done", {"reply_to": event.message_id})


async def _media_uri(media: Image | Voice, mime: str) -> str:
    """Something an <img> or <audio> on the page can use: a data URI, or an http(s) URL ("" otherwise)."""
    found = await data_uri(media, mime)
    return found if found.startswith(("data:", "http://", "https://")) else ""
