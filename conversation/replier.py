"""Delivery, in one place: text split to the platform's size, forward messages, pictures, quoting."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import TYPE_CHECKING

from loguru import logger

from adapters.base import Adapter
from conversation.moderation import WordFilter
from conversation.render import split_text
from conversation.voice import Speech
from core.config import Settings
from core.errors import BotError, MessageSwallowedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Target
from core.message import Forward, ForwardNode, Image, Message, Text, describe
from core.metrics import Metrics
from voice.errors import VoiceError
from voice.service import VoiceService
from voice.text import split_spoken

if TYPE_CHECKING:
    from conversation.render_image import MarkdownRenderer

DEFAULT_TEXT_LIMIT = 4500  # when the adapter is gone (a reload removed it), split as for QQ


class Replier:
    """Sends everything the conversation layer says, choosing the form per reply mode (`[response] mode`,
    or the session's own from the mode commands).

    The manager owns one and hands it to ChatFlow; `adapters` is the manager's own dict, so
    adapters added later are seen.
    """

    def __init__(
        self,
        settings: Settings,
        adapters: dict[str, Adapter],
        metrics: Metrics | None = None,
        voice: VoiceService | None = None,
    ) -> None:
        self.adapters = adapters
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.voice = voice
        self._renderer: MarkdownRenderer | None = None
        self._render_lock = asyncio.Lock()  # one renderer, used by one thread at a time
        self.log = logger.bind(adapter="chat")

    def apply(self, settings: Settings) -> None:
        """Use `settings` from now on; the renderer is made again (the font may have changed)."""
        self.settings = settings
        self._renderer = None

    def text_limit(self, event: MessageEvent) -> int:
        """The longest text message the platform `event` came from takes."""
        adapter = self.adapters.get(event.adapter)
        return adapter.max_text_length if adapter is not None else DEFAULT_TEXT_LIMIT

    def wants_drafts(self, event: MessageEvent) -> bool:
        """Whether the platform of `event` shows a streamed answer live (the console's chat page)."""
        adapter = self.adapters.get(event.adapter)
        return adapter is not None and adapter.wants_drafts

    async def draft(self, event: MessageEvent, text: str) -> None:
        """The visible answer so far, for a platform that `wants_drafts`."""
        adapter = self.adapters.get(event.adapter)
        if adapter is not None:
            await adapter.draft(event, text)

    def outbox(
        self, event: MessageEvent, words: WordFilter, refusing: bool, delay: float, mode: str, speech: Speech | None
    ) -> Outbox:
        """A buffer for the parts of one streamed answer to `event`, delivered in reply `mode` (and spoken)."""
        return Outbox(self, event, words, refusing, delay, mode, speech)

    @property
    def default_voice(self) -> str:
        """The voice of sessions that did not choose one ("" without text to speech)."""
        return self.voice.default_voice if self.voice is not None and self.voice.tts_enabled else ""

    async def speak(self, event: MessageEvent, text: str, voice: str, quote: bool) -> bool:
        """`text` as a voice message in `voice` where `event` came from; False (said in one log line)
        when it could not be: the platform has no voice messages, synthesis failed, or sending did
        (sending logs its own line)."""
        adapter = self.adapters.get(event.adapter)
        if adapter is None or self.voice is None or not text.strip():
            return False
        target = event.target
        if not adapter.voice_format:
            self.log.info(
                "{} cannot send voice messages; the answer to {} is text only", adapter.protocol, target.describe()
            )
            return False
        try:
            message = (await self.voice.speak(text, voice, adapter.voice_format),)
        except VoiceError as exc:
            self.log.warning("the answer to {} could not be spoken ({}); it is text only", target.describe(), exc)
            return False
        return await self._send_one(adapter, target, message, self._quote_for(event, quote))

    async def send(self, event: MessageEvent, content: str | Message, quote: bool = True) -> None:
        """Send text (split to the platform's size) or a message where `event` came from.

        The first message quotes the user's in groups when `[response] quote` is on.
        """
        adapter = self.adapters.get(event.adapter)
        if adapter is None:
            self.log.error("no adapter {} to reply through", event.adapter)
            return
        messages: list[Message] = (
            [(Text(part),) for part in split_text(content, adapter.max_text_length)]
            if isinstance(content, str)
            else [content]
        )
        quoted = self._quote_for(event, quote)
        for message in messages:
            if not await self._send_one(adapter, event.target, message, quoted):
                return
            quoted = None

    def _quote_for(self, event: MessageEvent, quote: bool) -> str | None:
        """The id of the user's message to quote, when `quote` is asked and quoting applies (groups with
        `[response] quote`)."""
        return (
            event.message_id if quote and event.is_group and self.settings.response.quote and event.message_id else None
        )

    async def _send_one(self, adapter: Adapter, target: Target, message: Message, quote: str | None) -> bool:
        """One message; when the platform swallowed it in every form it knows, once more as a picture."""
        try:
            await adapter.send(target, message, quote=quote)
            self.metrics.message_out(adapter.instance)
            return True
        except MessageSwallowedError:
            pass
        except BotError as exc:
            self.log.error("reply to {} failed: {}", target.describe(), exc)
            return False
        text = describe(message) if all(isinstance(seg, Text) for seg in message) else ""
        png = await self.render(text) if text else None
        if png is not None:
            self.log.warning("resending the swallowed message to {} as a picture", target.describe())
            try:
                await adapter.send(target, (Image(base64=base64.b64encode(png).decode()),))
                self.metrics.message_out(adapter.instance)
                return True
            except BotError:
                pass  # swallowed again (or failed): said below
        self.log.error("the message to {} was swallowed in every form; it was not delivered", target.describe())
        return False

    async def deliver(self, event: MessageEvent, parts: list[str], quote: bool, mode: str) -> None:
        """A whole answer: a picture (`mode` image, or mixed and long), a forward message when it is
        very long and the platform has them, else text messages."""
        response = self.settings.response
        adapter = self.adapters.get(event.adapter)
        text = "\n\n".join(parts)
        if mode == "image" or (mode == "mixed" and len(text) > response.image_threshold):
            png = await self.render(text)
            if png is not None:
                await self.send(event, (Image(base64=base64.b64encode(png).decode()),), quote)
                return
        messages = pack(parts, self.text_limit(event))
        if adapter is not None and adapter.max_replies and len(messages) > adapter.max_replies:
            # e.g. the official QQ API: at most 5 replies to one message; the rest goes into the last
            keep = adapter.max_replies - 1
            messages = [*messages[:keep], "\n\n".join(messages[keep:])]
        too_long = response.forward_threshold and len(text) > response.forward_threshold
        if too_long and adapter is not None and adapter.supports_forward:
            name = adapter.nickname or "ChatGPT"
            nodes = tuple(ForwardNode(event.self_id, name, (Text(m),), int(time.time())) for m in messages)
            await self.send(event, (Forward(nodes=nodes),), quote)
            return
        for message in messages:
            await self.send(event, message, quote)
            quote = False

    async def render(self, text: str) -> bytes | None:
        """`text` as a PNG (rendered in a worker thread), or None when rendering failed."""
        try:
            if self._renderer is None:
                from conversation.render_image import MarkdownRenderer  # Pillow loads only when used

                self._renderer = MarkdownRenderer(self.settings.response.font_path)
            renderer = self._renderer
            async with self._render_lock:
                return await asyncio.to_thread(renderer.render, text)
        except Exception:
            self.log.exception("rendering an answer as an image failed; sending text")
            return None

    async def answer_poke(self, event: NoticeEvent) -> None:
        """The configured poke reply, where the poke happened."""
        adapter = self.adapters.get(event.adapter)
        if adapter is None:
            return
        chat = ChatType.GROUP if event.group_id else ChatType.PRIVATE
        target = Target(event.adapter, chat, event.user_id, event.group_id)
        try:
            await adapter.send(target, (Text(self.settings.response.poke_reply),))
        except BotError as exc:
            self.log.error("answering a poke from {} failed: {}", event.user_id, exc)

    async def answer_request(self, event: RequestEvent) -> None:
        """Friend requests and group invitations: each accepted or refused by its own `[system]` switch."""
        system = self.settings.system
        approve = system.accept_friend_request if event.kind == "friend" else system.accept_group_invite
        adapter = self.adapters.get(event.adapter)
        if adapter is None:
            return
        verdict = "accepted" if approve else "refused"
        try:
            await adapter.answer_request(event, approve=approve)
            self.log.info("{} {} request from {}", verdict, event.kind, event.user_id)
        except BotError as exc:
            self.log.error("could not answer {} request from {}: {}", event.kind, event.user_id, exc)


class Outbox:
    """Parts of a streamed answer waiting to be sent: released together every `delay` seconds.

    A quick answer goes out as one message; a slow, long one arrives paragraph group by paragraph
    group, so the user sees its start early without being flooded.
    """

    def __init__(
        self,
        replier: Replier,
        event: MessageEvent,
        words: WordFilter,
        refusing: bool,
        delay: float,
        mode: str,
        speech: Speech | None = None,
    ) -> None:
        self.replier = replier
        self.mode = mode
        self.speech = speech
        self.event = event
        self.words = words
        self.refusing = refusing
        self.delay = delay
        self.pending: list[str] = []
        self.sent = 0
        self.delivered: list[str] = []  # the answer's parts that went out (notes not included)
        self._pending_parts = 0  # how many of `pending` are the answer's parts (the rest is a note)
        self.refused = False
        self.started = time.monotonic()

    async def add(self, parts: list[str], final: bool = False, note: str = "") -> None:
        """Queue parts of the answer; `note` is the bot's own line after the last part (not filtered)."""
        if self.refused:
            return
        words = self.words
        if self.refusing and any(words.found(part) for part in parts):
            self.refused = True  # nothing more of this answer goes out
            return
        self.pending.extend(words.mask(part) for part in parts)
        self._pending_parts = len(self.pending)
        if note:
            self.pending.append(note)
        if not final and (not self.pending or time.monotonic() - self.started < self.delay):
            return
        answer, notes = self.pending[: self._pending_parts], self.pending[self._pending_parts :]
        self.delivered += answer
        self.pending, self._pending_parts = [], 0
        if not final or self.speech is None:
            await self._send_text(answer + notes, final)
            return
        # The whole answer is known: spoken up to the cap, instead of the text or after it.
        spoken, rest = split_spoken("\n\n".join(self.delivered), self.replier.settings.voice.tts_max_chars)
        if self.speech.only and not self.sent:
            if await self.replier.speak(self.event, spoken, self.speech.voice, True):
                # what was not spoken follows as text, in the session's reply form
                await self._send_text([part for part in (rest, *notes) if part], final, quote=False)
                self.sent = max(self.sent, 1)
                return
            await self._send_text(answer + notes, final)  # as text, the voice having failed (said in the log)
            return
        await self._send_text(answer + notes, final)
        await self.replier.speak(self.event, spoken, self.speech.voice, False)

    async def _send_text(self, parts: list[str], final: bool, quote: bool = True) -> None:
        """Parts as text: the whole answer in its reply form when nothing went out yet, else packed messages."""
        if not parts:
            return
        if final and not self.sent:
            await self.replier.deliver(self.event, parts, quote, self.mode)
            self.sent = 1
            return
        for message in pack(parts, self.replier.text_limit(self.event)):
            await self.replier.send(self.event, (Text(message),), quote and self.sent == 0)
            self.sent += 1
        self.started = time.monotonic()


def pack(parts: list[str], limit: int) -> list[str]:
    """Join consecutive parts with blank lines as long as each message stays within `limit`."""
    packed: list[str] = []
    for part in parts:
        if packed and len(packed[-1]) + 2 + len(part) <= limit:
            packed[-1] += "\n\n" + part
        else:
            packed.append(part)
    return packed
