"""Chat with the configured model in the terminal, through the same pipeline as QQ."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

from adapters.base import Adapter, EventSink
from core.event import ChatType, MessageEvent, Target
from core.message import Message, Text, describe

CONSOLE_USER = "console"
EXIT_WORDS = {"exit", "quit", "退出"}


class ConsoleAdapter(Adapter):
    """Reads lines from stdin as private messages and prints replies to stdout.

    stdin is read on a daemon thread: it works on Windows consoles too, and never blocks
    shutdown.
    """

    protocol = "console"
    max_text_length = 100_000
    voice_format = ""  # a terminal cannot play a voice

    def __init__(self, instance: str, settings: Any, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.closed = asyncio.Event()
        self._count = 0
        self.managers = frozenset({CONSOLE_USER})  # whoever sits at the terminal owns the bot

    async def start(self) -> None:
        """Start reading stdin."""
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_stdin, args=(loop,), name="console-stdin", daemon=True).start()
        self._link_up()
        print("控制台对话已开启，输入消息回车发送，输入 exit 退出。(console chat: type a message, 'exit' to quit)")
        sys.stdout.flush()

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            text = line.strip()
            if text.lower() in EXIT_WORDS:
                break
            if text:
                asyncio.run_coroutine_threadsafe(self._on_line(text), loop)
        loop.call_soon_threadsafe(self.closed.set)

    async def _on_line(self, text: str) -> None:
        self._count += 1
        await self.sink(
            MessageEvent(
                adapter=self.instance,
                platform="console",
                self_id="bot",
                chat_type=ChatType.PRIVATE,
                user_id=CONSOLE_USER,
                message=(Text(text),),
                message_id=str(self._count),
                to_me=True,
                sender_name="you",
            )
        )

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        print(f"\n机器人 bot> {describe(message)}\n", flush=True)
        return None
