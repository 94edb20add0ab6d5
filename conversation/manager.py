"""The conversation manager: dedupe, triggers, commands, per-session queues, the LLM call, replies."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger

from adapters.base import Adapter
from conversation.presets import PresetBook
from conversation.render import split_text
from conversation.triggers import TriggerRules
from core.config import Settings
from core.errors import BotError, LLMError, StorageError
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent
from core.message import Text
from core.tasks import TaskSet
from core.tokens import estimate_tokens
from llm.base import ChatModel, ChatTurn, LLMReply
from storage.base import HistoryStore

DEDUPE_SIZE = 4096
WORKER_IDLE_SECONDS = 60.0
# Shown instead of the real error (which goes to the log): short, and never a secret.
LLM_FAILURE_REASONS = {
    "auth": "模型账号验证失败，请联系管理员检查 API Key",
    "rate_limit": "请求太频繁，请稍后再试",
    "timeout": "模型响应超时",
    "network": "无法连接到模型服务",
    "server": "模型服务暂时不可用",
    "bad_request": "请求被模型服务拒绝",
}
STORAGE_FAILURE = "聊天记录数据库暂时无法读写"


@dataclass(slots=True)
class Job:
    """One triggered message waiting in its session's queue."""

    event: MessageEvent
    prompt: str
    session_key: str


Command = Callable[[Job], Awaitable[str]]


class ConversationManager:
    """Receives every event from every adapter and answers the ones meant for the bot.

    One FIFO queue (and one worker task) per session keeps a user's replies in order; a
    semaphore caps how many model calls run at once across sessions.
    """

    def __init__(self, settings: Settings, store: HistoryStore, model: ChatModel, presets: PresetBook) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.presets = presets
        self.adapters: dict[str, Adapter] = {}
        self.triggers = TriggerRules(settings.trigger)
        self.commands: dict[str, Command] = {}
        for word in settings.trigger.reset_command:
            self.commands[word.strip()] = self._reset
        for word in settings.trigger.rollback_command:
            self.commands[word.strip()] = self._rollback
        self._queues: dict[str, asyncio.Queue[Job]] = {}
        self._slots = asyncio.Semaphore(settings.conversation.max_concurrency)
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.tasks = TaskSet("conversation")
        self.log = logger.bind(adapter="chat")

    async def handle(self, event: Event) -> None:
        """The sink every adapter feeds; returns quickly (work happens in session workers)."""
        if isinstance(event, MessageEvent):
            self._on_message(event)
        elif isinstance(event, RequestEvent):
            self.tasks.spawn(self._on_request(event), name="request")
        elif isinstance(event, NoticeEvent):
            self.log.debug("{} notice from {}", event.kind, event.user_id)

    def session_key(self, event: MessageEvent) -> str:
        """Private chats per user; groups per member or shared, per `[conversation] group_scope`."""
        if event.chat_type is ChatType.GROUP:
            if self.settings.conversation.group_scope == "group":
                return f"{event.platform}:group:{event.group_id}"
            return f"{event.platform}:group:{event.group_id}:{event.user_id}"
        return f"{event.platform}:private:{event.user_id}"

    def _is_duplicate(self, event: MessageEvent) -> bool:
        if not event.message_id:
            return False
        key = (event.adapter, event.chat_type, event.group_id or event.user_id, event.message_id)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > DEDUPE_SIZE:
            self._seen.popitem(last=False)
        return False

    def _on_message(self, event: MessageEvent) -> None:
        if event.chat_type in (ChatType.TEMP, ChatType.STRANGER) and not self.settings.system.reply_temp:
            return
        if self._is_duplicate(event):
            self.log.debug("dropped a redelivered message {}", event.message_id)
            return
        prompt = self.triggers.prompt_of(event)
        if prompt is None or (not prompt and prompt not in self.commands):
            return
        key = self.session_key(event)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self.tasks.spawn(self._work(key, queue), name=f"session {key}")
        limit = self.settings.response.max_queue_size
        if limit and queue.qsize() >= limit:
            self.tasks.spawn(self._reply(event, self.settings.response.queue_full), name="queue-full")
            return
        queue.put_nowait(Job(event, prompt, key))

    async def _work(self, key: str, queue: asyncio.Queue[Job]) -> None:
        """Serve one session's queue in order; end after a quiet minute."""
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps the get() in a new task every time.
                async with asyncio.timeout(WORKER_IDLE_SECONDS):
                    job = await queue.get()
            except TimeoutError:
                if queue.empty():
                    del self._queues[key]
                    return
                continue
            try:
                await self._process(job)
            except Exception:
                self.log.exception("failed to answer a message in session {}", key)
            finally:
                queue.task_done()

    async def _process(self, job: Job) -> None:
        command = self.commands.get(job.prompt)
        try:
            if command is not None:
                await self._reply(job.event, await command(job))
            else:
                await self._chat(job)
        except StorageError:
            # The store logged the detail; the user learns something went wrong, briefly.
            await self._reply(job.event, self.settings.response.error_format.replace("{exc}", STORAGE_FAILURE))

    async def _reset(self, job: Job) -> str:
        await self.store.reset(job.session_key)
        return self.settings.response.reset

    async def _rollback(self, job: Job) -> str:
        response = self.settings.response
        if await self.store.rollback(job.session_key):
            return response.rollback_success
        reset_word = self.settings.trigger.reset_command[0] if self.settings.trigger.reset_command else ""
        return response.rollback_fail.replace("{reset}", reset_word)

    def _user_text(self, job: Job) -> str:
        if job.event.is_group and self.settings.conversation.group_scope == "group":
            # A shared group history needs to say who is speaking.
            return f"{job.event.sender_name or job.event.user_id}: {job.prompt}"
        return job.prompt

    async def _chat(self, job: Job) -> None:
        preset = self.presets.turns()
        user_text = self._user_text(job)
        budget = self.settings.conversation.max_history_tokens - estimate_tokens(user_text)
        budget -= self.presets.tokens()
        history = await self.store.window(job.session_key, max(0, budget))
        turns = [*preset, *(ChatTurn(t.role, t.content) for t in history), ChatTurn("user", user_text)]  # type: ignore[arg-type]
        async with self._slots:
            call = asyncio.ensure_future(self.model.complete(turns))
            try:
                text = await self._await_reply(job, call)
            except Exception as exc:
                kind = getattr(exc, "kind", "server")
                if isinstance(exc, LLMError):
                    self.log.error("no model answered session {}: {}", job.session_key, exc)
                else:
                    self.log.exception("the model call for session {} crashed", job.session_key)
                reason = LLM_FAILURE_REASONS.get(kind, LLM_FAILURE_REASONS["server"])
                await self._reply(job.event, self.settings.response.error_format.replace("{exc}", reason))
                return
        if text is None:
            return
        try:
            await self.store.append_exchange(job.session_key, user_text, text)
        except StorageError:
            self.log.error("the reply to session {} could not be saved; sending it anyway", job.session_key)
        await self._reply(job.event, text)

    async def _await_reply(self, job: Job, call: asyncio.Future[LLMReply]) -> str | None:
        """Wait for the model; one "still thinking" notice after `timeout`, give up at `max_timeout`."""
        response = self.settings.response
        try:
            done, _ = await asyncio.wait({call}, timeout=response.timeout)
            if not done and response.max_timeout > response.timeout:
                await self._reply(job.event, response.timeout_format)
                done, _ = await asyncio.wait({call}, timeout=response.max_timeout - response.timeout)
            if not done:
                self.log.warning("gave up on session {} after {}s", job.session_key, response.max_timeout)
                await self._reply(job.event, response.cancel_wait_too_long)
                return None
            return call.result().text
        finally:
            # Also when this worker is cancelled at shutdown: the model call must not outlive it.
            if not call.done():
                call.cancel()

    async def _reply(self, event: MessageEvent, text: str) -> None:
        """Send `text` to where `event` came from, split to the platform's size; quote in groups."""
        adapter = self.adapters.get(event.adapter)
        if adapter is None:
            self.log.error("no adapter {} to reply through", event.adapter)
            return
        quote = event.message_id if event.is_group and self.settings.response.quote and event.message_id else None
        for part in split_text(text, adapter.max_text_length):
            try:
                await adapter.send(event.target, (Text(part),), quote=quote)
            except BotError as exc:
                self.log.error("reply to {} failed: {}", event.target.describe(), exc)
                return
            quote = None

    async def _on_request(self, event: RequestEvent) -> None:
        system = self.settings.system
        approve = system.accept_friend_request if event.kind == "friend" else system.accept_group_invite
        if not approve:
            self.log.info("{} request from {} left for the owner to answer", event.kind, event.user_id)
            return
        adapter = self.adapters.get(event.adapter)
        if adapter is None:
            return
        try:
            await adapter.answer_request(event, approve=True)
            self.log.info("accepted {} request from {}", event.kind, event.user_id)
        except BotError as exc:
            self.log.error("could not accept {} request from {}: {}", event.kind, event.user_id, exc)

    async def drain(self) -> None:
        """Wait until every message already queued has been answered."""
        for queue in list(self._queues.values()):
            await queue.join()

    async def stop(self, timeout: float = 3.0) -> None:
        """Abandon queued and in-flight work (at most `timeout` seconds)."""
        await self.tasks.close(timeout)
        self._queues.clear()
