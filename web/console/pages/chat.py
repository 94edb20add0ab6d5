"""聊天 Chat: talk to the bot from the browser through the same pipeline as QQ (presets, history, commands)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from adapters.webchat.adapter import OWNER, WebChatAdapter
from storage.base import TOOL_ROLE, StoredTurn

if TYPE_CHECKING:
    from web.console.app import Console

ORDER = 30
SESSION_KEY = f"console:private:{OWNER}"  # the pipeline's key for the console's private chat
HISTORY_TOKENS = 6000  # how much earlier conversation the page shows
MAX_TEXT = 10_000
PING_SECONDS = 15.0


def setup(console: Console) -> None:
    def chat() -> WebChatAdapter | None:
        adapter = console.bot.adapters.get("web")
        return adapter if isinstance(adapter, WebChatAdapter) else None

    async def page(request: web.Request) -> web.Response:
        turns: list[StoredTurn] = await console.bot.store.window(SESSION_KEY, HISTORY_TOKENS)
        history = [turn for turn in turns if turn.role != TOOL_ROLE]  # what was said, not the tools' results
        return console.render(request, "chat.html", history=history, available=chat() is not None)

    async def send(request: web.Request) -> web.Response:
        adapter = chat()
        if adapter is None:
            return web.json_response({"error": "聊天页不可用 (chat unavailable)"}, status=409)
        form = await request.post()
        text = form.get("text", "")
        if not isinstance(text, str) or not text.strip():
            return web.json_response({"error": "消息不能为空 (empty message)"}, status=400)
        if len(text) > MAX_TEXT:
            return web.json_response({"error": f"消息太长（最多 {MAX_TEXT} 字）(too long)"}, status=400)
        return web.json_response({"id": await adapter.say(text.strip())})

    async def stream(request: web.Request) -> web.StreamResponse:
        adapter = chat()
        queue = adapter.follow() if adapter is not None else None
        if adapter is None or queue is None:
            return web.Response(status=429, text="打开的聊天页太多 (too many chat pages open)")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        try:
            await response.prepare(request)
            await response.write(b": connected\n\n")
            while True:
                try:
                    async with asyncio.timeout(PING_SECONDS):
                        event = await queue.get()
                except TimeoutError:
                    event = ": ping\n\n"
                if not event:
                    break  # the bot is stopping
                await response.write(event.encode())
            await response.write_eof()
        except ConnectionResetError:
            pass  # the page went away
        finally:
            adapter.unfollow(queue)
        return response

    console.page("/chat", "聊天", page)
    console.post("/chat/send", send)
    console.get("/chat/stream", stream)
