"""One chat turn: build the request from preset, history and images, stream the answer out, store it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loguru import logger

from conversation.job import FAILURE_REASONS, Job, failure_text
from conversation.moderation import WordFilter
from conversation.presets import PresetBook
from conversation.sessions import SessionSettings
from conversation.streaming import ParagraphStream
from core.config import Settings
from core.errors import LLMError, StorageError
from core.event import MessageEvent
from core.message import Image, Message, Quote, Text, describe
from core.tokens import estimate_tokens
from llm.base import ChatModel, ChatTurn
from llm.images import ImageFetcher
from storage.base import HistoryStore

QUOTE_CONTEXT_CHARS = 300

# (job, text or message, quote the user's message?) -> sends it; returns when sent or queued
Sender = Callable[[Job, "str | Message", bool], Awaitable[None]]
# (job, the parts of a whole answer, quote?) -> sends it as text, a picture or a forward message
Deliverer = Callable[[Job, list[str], bool], Awaitable[None]]


class ChatFlow:
    """Answers one job with the model; the session queue guarantees one flow per session at a time."""

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        sessions: SessionSettings,
        model: ChatModel,
        presets: PresetBook,
        images: ImageFetcher,
        send: Sender,
        deliver: Deliverer,
        text_limit: Callable[[Job], int],
        words: WordFilter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.model = model
        self.presets = presets
        self.images = images
        self.send = send
        self.deliver = deliver
        self.text_limit = text_limit
        self.words = words
        self.log = logger.bind(adapter="chat")
        params = settings.openai.gpt_params
        budget = params.max_tokens - params.min_tokens  # v2: the context minus room kept for the reply
        if settings.conversation.max_history_tokens:
            budget = min(budget, settings.conversation.max_history_tokens)
        self.budget = max(0, budget)

    def user_text(self, job: Job) -> str:
        """What is stored and sent as the user's turn: the prompt, with quoted text as context."""
        text = job.prompt
        quote = next((seg for seg in job.event.message if isinstance(seg, Quote)), None)
        if quote is not None and quote.origin:
            quoted = describe(quote.origin).strip()[:QUOTE_CONTEXT_CHARS]
            if quoted:
                text = f"[引用: {quoted}]\n{text}"
        if job.event.is_group and self.settings.conversation.group_scope == "group":
            # A shared group history needs to say who is speaking.
            text = f"{job.event.sender_name or job.event.user_id}: {text}"
        return text

    @staticmethod
    def image_urls_in(event: MessageEvent) -> list[str]:
        """http(s) URLs the platform gave for the images in the message and in the message it quotes."""
        segments: list[object] = list(event.message)
        for seg in event.message:
            if isinstance(seg, Quote):
                segments.extend(seg.origin)
        return [seg.url for seg in segments if isinstance(seg, Image) and seg.url.startswith(("http://", "https://"))]

    async def answer(self, job: Job) -> None:
        """Ask the model and send its answer; on failure tell the user briefly and store nothing."""
        state = await self.sessions.get(job.session_key)
        idle_limit = self.settings.system.auto_reset_timeout_seconds
        if idle_limit and state.updated_at and time.time() - state.updated_at > idle_limit:
            # A long-idle conversation starts afresh; its preset, model and account stay.
            await self.store.reset(job.session_key)
            self.sessions.touched(job.session_key, time.time())
            self.log.info("session {} was idle for over {}s: new conversation", job.session_key, idle_limit)
        preset = self.presets.preset(state.preset)
        user_text = preset.format_prompt(self.user_text(job), job.event.sender_name or job.event.user_id)
        images: tuple[str, ...] = ()
        urls = self.image_urls_in(job.event)
        if urls and self.model.vision_available:
            images = tuple(await self.images.fetch_all(urls))
        budget = self.budget - estimate_tokens(user_text) - preset.tokens

        async def save(text: str) -> bool:
            try:
                now = time.time()
                await self.store.append_exchange(job.session_key, user_text, text, now=now)
                self.sessions.touched(job.session_key, now)
            except StorageError:
                self.log.error("the answer to session {} could not be saved; sending it anyway", job.session_key)
                return False
            return True

        for attempt in (1, 2):
            history = await self.store.window(job.session_key, max(0, budget))
            turns = [
                *preset.dated_turns(),
                *(ChatTurn(t.role, t.content) for t in history),  # type: ignore[arg-type]
                ChatTurn("user", user_text, images),
            ]
            failure = await self._ask(job, turns, state.model or None, state.account or None, save)
            if failure != "context_length":
                return
            if attempt == 2 or not history:
                await self.send(job, failure_text(self.settings.response.error_format, failure), True)
                return
            # The model's context is smaller than the budget assumed: once more with half the history sent.
            self.log.warning("session {} exceeded the model's context; retrying with a smaller window", job.session_key)
            budget = sum(turn.tokens for turn in history) // 2

    async def _ask(
        self,
        job: Job,
        turns: list[ChatTurn],
        model: str | None,
        account: str | None,
        save: Callable[[str], Awaitable[bool]],
    ) -> str | None:
        """Stream the answer out in parts and `save` it; the failure kind (after telling the user) or None.

        The answer is saved before its last part goes out, so a reply the user has seen in full is
        never missing from the history after a restart; when saving failed, that last part carries
        the not-saved notice. A context-length failure is not told: the caller retries with a
        smaller window first.
        """
        response = self.settings.response
        stream = ParagraphStream(self.text_limit(job), min_chars=1, strip_think=not response.show_reasoning)
        # Parts go out early only as text; a picture or a forward message needs the whole answer.
        early = response.buffer_delay if response.mode == "text" else float("inf")
        outbox = _Outbox(self, job, early)

        async def on_delta(piece: str) -> None:
            await outbox.add(stream.feed(piece))

        call = asyncio.ensure_future(self.model.complete(turns, model=model, account=account, on_delta=on_delta))
        try:
            done, _ = await asyncio.wait({call}, timeout=response.timeout)
            if not done and response.max_timeout > response.timeout:
                if not outbox.sent:
                    await self.send(job, response.timeout_format, True)
                done, _ = await asyncio.wait({call}, timeout=response.max_timeout - response.timeout)
            if not done:
                self.log.warning("gave up on session {} after {}s", job.session_key, response.max_timeout)
                await self.send(job, response.cancel_wait_too_long, not outbox.sent)
                return "timeout"
            call.result()
        except LLMError as exc:
            kind = getattr(exc, "kind", "server")
            self.log.error("no model answered session {}: {}", job.session_key, exc)
            if kind == "context_length" and not getattr(exc, "partial", False):
                return kind
            if outbox.sent:
                reason = FAILURE_REASONS.get(kind, FAILURE_REASONS["server"])
                await self.send(job, response.interrupted.replace("{exc}", reason), False)
            else:
                await self.send(job, failure_text(response.error_format, kind), True)
            return kind
        finally:
            # Also when this worker is cancelled at shutdown: the model call must not outlive it.
            if not call.done():
                call.cancel()
        last_parts = stream.finish()
        text = stream.text.strip()
        if not text:  # only reasoning, or only whitespace
            await self.send(job, failure_text(response.error_format, "server"), True)
            return "server"
        if outbox.refused or (self.refusing and self.words.found(text)):
            self.log.info("session {}: the answer contained a blocked word and was withheld", job.session_key)
            await self.send(job, self.settings.moderation.output_message, not outbox.sent)
            return "moderated"
        saved = await save(self.words.mask(text))
        await outbox.add(last_parts, final=True, note="" if saved else response.not_saved)
        return None

    @property
    def refusing(self) -> bool:
        """Blocked words in an answer withhold it (rather than masking the words)."""
        return self.settings.moderation.output_mode == "refuse"


class _Outbox:
    """Parts of a streamed answer waiting to be sent: released together every `delay` seconds.

    A quick answer goes out as one message; a slow, long one arrives paragraph group by paragraph
    group, so the user sees its start early without being flooded.
    """

    def __init__(self, flow: ChatFlow, job: Job, delay: float) -> None:
        self.flow = flow
        self.job = job
        self.delay = delay
        self.pending: list[str] = []
        self.sent = 0
        self.refused = False
        self.started = time.monotonic()

    async def add(self, parts: list[str], final: bool = False, note: str = "") -> None:
        """Queue parts of the answer; `note` is the bot's own line after the last part (not filtered)."""
        if self.refused:
            return
        words = self.flow.words
        if self.flow.refusing and any(words.found(part) for part in parts):
            self.refused = True  # nothing more of this answer goes out
            return
        self.pending.extend(words.mask(part) for part in parts)
        if note:
            self.pending.append(note)
        if not self.pending or not (final or time.monotonic() - self.started >= self.delay):
            return
        if final and not self.sent:
            await self.flow.deliver(self.job, self.pending, True)
            self.sent, self.pending = 1, []
            return
        limit = self.flow.text_limit(self.job)
        for message in pack(self.pending, limit):
            await self.flow.send(self.job, (Text(message),), self.sent == 0)
            self.sent += 1
        self.pending.clear()
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
