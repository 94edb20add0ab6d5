"""The conversation manager: dedupe, triggers, commands, per-session queues, and sending replies."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from loguru import logger

from adapters.base import Adapter
from conversation.chat import ChatFlow
from conversation.commands import CommandTable, SessionCommands
from conversation.job import Job, failure_text
from conversation.moderation import WordFilter
from conversation.presets import PresetBook
from conversation.render import split_text
from conversation.sessions import SessionSettings
from conversation.triggers import TriggerRules
from core.config import Settings
from core.errors import BotError, StorageError
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent
from core.message import Message, Text
from core.tasks import TaskSet
from llm.base import ChatModel
from llm.images import ImageFetcher
from storage.base import HistoryStore

DEDUPE_SIZE = 4096
WORKER_IDLE_SECONDS = 60.0


class ConversationManager:
    """Receives every event from every adapter and answers the ones meant for the bot.

    One FIFO queue (and one worker task) per session keeps a user's replies in order; a
    semaphore caps how many model calls run at once across sessions.
    """

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        model: ChatModel,
        presets: PresetBook,
        images: ImageFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.presets = presets
        self.images = images or ImageFetcher()
        self.adapters: dict[str, Adapter] = {}
        self.triggers = TriggerRules(settings.trigger)
        self.sessions = SessionSettings(store)
        self.commands = CommandTable()
        SessionCommands(settings, store, self.sessions, model, presets).register(self.commands)
        self.words = WordFilter(settings.moderation)
        self.chat = ChatFlow(
            settings, store, self.sessions, model, presets, self.images, self._send, self._text_limit, self.words
        )
        self._queues: dict[str, asyncio.Queue[Job]] = {}
        self._slots = asyncio.Semaphore(settings.conversation.max_concurrency)
        self._group_slots: dict[str, asyncio.Semaphore] = {}
        self._busy: set[str] = set()  # sessions whose worker is answering right now
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
        adapter = self.adapters.get(event.adapter)
        prompt = self.triggers.prompt_of(event, adapter.nickname if adapter is not None else "")
        if prompt is None:
            return
        admin = adapter is not None and event.user_id in adapter.managers
        command = self.commands.match(prompt)
        if command is not None and command.admin_only and not admin:
            return  # admin commands get no reaction from anyone else
        if command is None and not prompt and not self.chat.image_urls_in(event):
            return
        key = self.session_key(event)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self.tasks.spawn(self._work(key, queue), name=f"session {key}")
        response = self.settings.response
        if response.max_queue_size and queue.qsize() >= response.max_queue_size:
            self.tasks.spawn(self._reply(event, response.queue_full), name="queue-full")
            return
        handler, argument = (command.handler, command.argument) if command is not None else (None, "")
        queue.put_nowait(Job(event, prompt, key, admin, handler, argument))
        ahead = queue.qsize() - 1 + (key in self._busy)
        if response.queued_notice_size and ahead >= response.queued_notice_size:
            notice = response.queued_notice.replace("{queue_size}", str(ahead))
            self.tasks.spawn(self._reply(event, notice), name="queued-notice")

    def _text_limit(self, job: Job) -> int:
        adapter = self.adapters.get(job.event.adapter)
        return adapter.max_text_length if adapter is not None else 4500

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
            self._busy.add(key)
            try:
                await self._process(job)
            except Exception:
                self.log.exception("failed to answer a message in session {}", key)
            finally:
                self._busy.discard(key)
                queue.task_done()

    async def _process(self, job: Job) -> None:
        try:
            if job.command is not None:
                await self._reply(job.event, await job.command(job, job.argument))
            elif self.words.found(job.prompt):
                await self._reply(job.event, self.settings.moderation.input_message)
            else:
                # A busy group gets at most group_concurrency of the global slots at a time.
                async with self._group_slot(job.event.group_id), self._slots:
                    await self.chat.answer(job)
        except StorageError:
            # The store logged the detail; the user learns something went wrong, briefly.
            await self._reply(job.event, failure_text(self.settings.response.error_format, "storage"))

    def _group_slot(self, group_id: str) -> asyncio.Semaphore | contextlib.nullcontext[None]:
        if not group_id:
            return contextlib.nullcontext()
        slot = self._group_slots.get(group_id)
        if slot is None:
            slot = self._group_slots[group_id] = asyncio.Semaphore(self.settings.conversation.group_concurrency)
        return slot

    async def _send(self, job: Job, content: str | Message, quote: bool) -> None:
        await self._reply(job.event, content, quote)

    async def _reply(self, event: MessageEvent, content: str | Message, quote: bool = True) -> None:
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
        quoted = quote and event.is_group and self.settings.response.quote and event.message_id
        for message in messages:
            try:
                await adapter.send(event.target, message, quote=event.message_id if quoted else None)
            except BotError as exc:
                self.log.error("reply to {} failed: {}", event.target.describe(), exc)
                return
            quoted = False

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
        await self.images.close()
