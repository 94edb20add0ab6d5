"""One chat turn: build the request from preset, history and images, stream the answer out, store it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from loguru import logger

from conversation.job import FAILURE_LOGS, FAILURE_REASONS, Job, failure_text
from conversation.moderation import WordFilter
from conversation.presets import PresetBook
from conversation.replier import Outbox, Replier
from conversation.sessions import SessionSettings
from conversation.streaming import ParagraphStream, strip_reasoning
from conversation.tools import ToolBox, ToolRun, history_turns, tools_switched_off
from conversation.voice import SPOKEN_MARK, Speech, speech_for
from core.config import Settings
from core.errors import LLMError, StorageError
from core.event import MessageEvent
from core.message import Image, Quote, describe
from core.metrics import OK, Metrics
from core.tokens import Calibration, estimate_tokens
from llm.base import ChatModel, ChatTurn, DeltaSink, LLMReply, ReplyStopped
from llm.images import ImageFetcher
from storage.admin import AdminStore
from storage.base import HistoryStore, StoredTool

QUOTE_CONTEXT_CHARS = 300
# Ends the stored text of an answer whose stream broke after parts of it reached the user, so the
# model sees on "继续" that it was cut off (the history has no column for it).
INTERRUPTED_MARK = "（回答中断）"


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
        replier: Replier,
        words: WordFilter,
        tools: ToolBox | None = None,
        admin: AdminStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.model = model
        self.presets = presets
        self.images = images
        self.replier = replier
        self.words = words
        self.tools = tools
        self.admin = admin
        self.metrics = metrics
        self.log = logger.bind(adapter="chat")
        # real tokens per estimated token, per model, learnt from the servers' reported usage
        self.calibration = Calibration()

    def user_text(self, job: Job) -> str:
        """What is stored and sent as the user's turn: the prompt, with quoted text as context."""
        text = SPOKEN_MARK + job.prompt if job.spoken else job.prompt
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

    async def answer(self, job: Job) -> str:
        """Ask the model and send its answer; on failure tell the user briefly and store nothing.

        Returns the outcome: "ok", or the failure kind (timeout, auth, moderated, ...)."""
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
        # Estimates are scaled by the model's calibration: the window and the completion limit must
        # fit the server's real context, which counts the server's tokens, not our estimate's.
        params = self.settings.openai.gpt_params
        ratio = self.calibration.ratio(state.model or self.model.default_model(state.account or None))
        fixed = estimate_tokens(user_text) + preset.tokens
        budget = int((params.max_tokens - params.min_tokens) / ratio)  # v2: the context minus room for the reply
        if self.settings.conversation.max_history_tokens:
            budget = min(budget, self.settings.conversation.max_history_tokens)
        budget -= fixed

        run: ToolRun | None = None

        async def save(text: str) -> bool:
            try:
                now = time.time()
                used: list[StoredTool] = run.stored if run is not None else []
                await self.store.append_exchange(job.session_key, user_text, text, now=now, tools=used)
                self.sessions.touched(job.session_key, now)
            except StorageError:
                self.log.error("the answer to session {} could not be saved; sending it anyway", job.session_key)
                return False
            return True

        speech = speech_for(self.settings, state, self.replier.default_voice)
        for attempt in (1, 2):
            history = await self.store.window(job.session_key, max(0, budget))
            turns = [*preset.dated_turns(), *history_turns(history), ChatTurn("user", user_text, images)]
            run = await self._tool_run(job)
            estimated = fixed + sum(turn.tokens for turn in history)
            # v2 sent the context minus the prompt as the completion limit; the backend applies the floor
            limit = params.max_tokens - math.ceil(estimated * ratio)
            failure = await self._ask(
                job,
                turns,
                state.model or None,
                state.account or None,
                save,
                state.reply_mode or self.settings.response.mode,
                limit,
                0 if images else estimated,
                speech,
                run,
            )
            if failure != "context_length":
                return failure or OK
            if attempt == 2 or not history:
                await self.replier.send(job.event, failure_text(self.settings.response.error_format, failure), True)
                return failure
            # The model's context is smaller than the budget assumed: once more with half the history sent.
            self.log.warning("session {} exceeded the model's context; retrying with a smaller window", job.session_key)
            budget = sum(turn.tokens for turn in history) // 2
        return "context_length"  # not reached: the second attempt returns above

    async def _ask(
        self,
        job: Job,
        turns: list[ChatTurn],
        model: str | None,
        account: str | None,
        save: Callable[[str], Awaitable[bool]],
        mode: str,
        reply_limit: int | None = None,
        estimated: int = 0,
        speech: Speech | None = None,
        run: ToolRun | None = None,
    ) -> str | None:
        """Stream the answer out in parts and `save` it; the failure kind (after telling the user) or None.

        The answer is saved before its last part goes out, so a reply the user has seen in full is
        never missing from the history after a restart; when saving failed, that last part carries
        the not-saved notice. A context-length failure is not told: the caller retries with a
        smaller window first. An answer longer than `max_reply_chars` is cut there, its model call
        stopped. When a stream breaks after parts reached the user, those parts are saved, marked.
        `estimated` (the prompt's estimated tokens; 0 to skip) calibrates against reported usage.
        With `speech` the answer is also (or, `only`, instead) spoken; with `run` the model may call tools.
        """
        response = self.settings.response
        stream = ParagraphStream(
            self.replier.text_limit(job.event), min_chars=1, strip_think=not response.show_reasoning
        )
        # Parts go out early only as text; a picture, a forward message or a voice needs the whole answer.
        early = response.buffer_delay if mode == "text" and not (speech and speech.only) else float("inf")
        outbox = self.replier.outbox(job.event, self.words, self.refusing, early, mode, speech)
        cap = response.max_reply_chars
        fed = 0  # characters received, reasoning included: a cheap upper bound of the visible text
        capped = False

        drafts = self.replier.wants_drafts(job.event)

        async def on_delta(piece: str) -> None:
            nonlocal fed, capped
            fed += len(piece)
            if not cap or fed <= cap:
                await outbox.add(stream.feed(piece))
                if drafts and not outbox.refused:
                    await self.replier.draft(job.event, self.words.mask(stream.text))
                return
            parts: list[str] = []
            while piece:  # feed only up to the cap; reasoning (not visible) does not count
                room = cap - len(stream.text)
                if room <= 0:
                    capped = True
                    break
                parts += stream.feed(piece[:room])
                piece = piece[room:]
            await outbox.add(parts)
            if capped:
                raise ReplyStopped  # stops the model call: a looping model must not run on

        call = asyncio.ensure_future(self._complete(turns, model, account, on_delta, reply_limit, run))
        try:
            done, _ = await asyncio.wait({call}, timeout=response.timeout)
            if not done and response.max_timeout > response.timeout:
                if not outbox.sent and not (run is not None and run.notified):
                    await self.replier.send(job.event, response.timeout_format, True)
                done, _ = await asyncio.wait({call}, timeout=response.max_timeout - response.timeout)
            if not done:
                self.log.warning(
                    "session {}: {}; gave up after {}s", job.session_key, FAILURE_LOGS["timeout"], response.max_timeout
                )
                if outbox.sent:
                    await self._keep_partial(job, outbox, save, "the answer was given up")
                await self.replier.send(job.event, response.cancel_wait_too_long, not outbox.sent)
                return "timeout"
            reply = call.result()
            if estimated and reply.prompt_tokens:
                ratio = self.calibration.observe(reply.model, estimated, reply.prompt_tokens)
                self.log.debug(
                    "model {}: {} prompt tokens, {} estimated; ratio now {:.2f}",
                    reply.model,
                    reply.prompt_tokens,
                    estimated,
                    ratio,
                )
        except ReplyStopped:
            pass  # the answer reached max_reply_chars: what came so far is the answer, cut
        except LLMError as exc:
            kind = getattr(exc, "kind", "server")
            partial = bool(getattr(exc, "partial", False))
            shown = "interrupted" if partial else kind  # a broken stream, whatever broke it
            self.log.error("session {}: {} ({})", job.session_key, FAILURE_LOGS.get(shown, FAILURE_LOGS["server"]), exc)
            if kind == "context_length" and not partial:
                return kind
            if outbox.sent:
                await self._keep_partial(job, outbox, save, "the stream broke")
                reason = FAILURE_REASONS.get(shown, FAILURE_REASONS["server"])
                await self.replier.send(job.event, response.interrupted.replace("{exc}", reason), False)
            else:
                if partial:
                    self.log.warning("session {}: no part of the answer had reached the user", job.session_key)
                await self.replier.send(job.event, failure_text(response.error_format, shown), True)
            return kind
        finally:
            # Also when this worker is cancelled at shutdown: the model call must not outlive it.
            if not call.done():
                call.cancel()
        last_parts = stream.finish()
        text = stream.text.strip()
        if not text:  # only reasoning, or only whitespace
            self.log.error("session {}: {} (no visible text)", job.session_key, FAILURE_LOGS["empty"])
            await self.replier.send(job.event, failure_text(response.error_format, "empty"), True)
            return "empty"
        if outbox.refused or (self.refusing and self.words.found(text)):
            self.log.info("session {}: the answer contained a blocked word and was withheld", job.session_key)
            await self.replier.send(job.event, self.settings.moderation.output_message, not outbox.sent)
            return "moderated"
        stored = self.words.mask(text)
        if capped:
            self.log.info("session {}: the answer reached {} characters and was cut", job.session_key, cap)
            stored += "\n\n" + response.truncated
        saved = await save(stored)
        notes = [response.truncated] if capped else []
        if not saved:
            notes.append(response.not_saved)
        if run is not None and run.exhausted:  # the sender's tool limit ran out during this answer
            notes.append(self.settings.ratelimit.tool_exceed)
        await outbox.add(last_parts, final=True, note="\n".join(notes))
        return None

    async def _tool_run(self, job: Job) -> ToolRun | None:
        """The tools this answer may use: none when tools are off, switched off where the sender is,
        or none is allowed to them."""
        if self.tools is None or self.admin is None or not self.tools.enabled:
            return None
        allowed = self.tools.allowed(job.event, job.admin)
        if not allowed or await tools_switched_off(self.admin, job.event):
            return None

        async def notify(text: str) -> None:
            await self.replier.send(job.event, text, True)

        return ToolRun(allowed, job.event, self.admin, self.settings, notify, self.metrics)

    async def _complete(
        self,
        turns: list[ChatTurn],
        model: str | None,
        account: str | None,
        on_delta: DeltaSink,
        reply_limit: int | None,
        run: ToolRun | None,
    ) -> LLMReply:
        """The model's answer; while it asks for tools (and calls are left), their results go back to it."""
        while True:
            offer = run.specs if run is not None else []
            reply = await self.model.complete(
                turns, model=model, account=account, on_delta=on_delta, max_reply_tokens=reply_limit, tools=offer
            )
            if run is None or not offer or not reply.tool_calls:
                return reply
            # the model's own words before its calls go back without its reasoning (providers refuse that)
            asked = ChatTurn("assistant", strip_reasoning(reply.text), tool_calls=reply.tool_calls)
            turns = [*turns, asked, *await run.run(reply.tool_calls)]

    async def _keep_partial(self, job: Job, outbox: Outbox, save: Callable[[str], Awaitable[bool]], what: str) -> None:
        """Store the parts of an unfinished answer that reached the user, marked, so "继续" has context."""
        sent = "\n\n".join(outbox.delivered)
        saved = await save(f"{sent}\n\n{INTERRUPTED_MARK}")
        self.log.warning(
            "session {}: {} after {} message(s) with {} characters of the answer reached the user; {}",
            job.session_key,
            what,
            outbox.sent,
            sum(map(len, outbox.delivered)),
            "stored them marked as interrupted" if saved else "they could not be stored",
        )

    @property
    def refusing(self) -> bool:
        """Blocked words in an answer withhold it (rather than masking the words)."""
        return self.settings.moderation.output_mode == "refuse"
