"""The conversation manager: dedupe, triggers, commands, per-session queues, and sending replies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

from adapters.base import Adapter
from conversation.admin import AdminCommands
from conversation.chat import ChatFlow, pack
from conversation.commands import CommandTable, SessionCommands
from conversation.job import Job, failure_text
from conversation.moderation import WordFilter
from conversation.presets import PresetBook
from conversation.render import split_text
from conversation.sessions import SessionSettings
from conversation.triggers import TriggerRules
from core.config import Settings
from core.errors import BotError, StorageError
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent, Target
from core.message import Forward, ForwardNode, Image, Message, Text
from core.tasks import TaskSet
from llm.base import ChatModel
from llm.images import ImageFetcher

if TYPE_CHECKING:
    from core.render_image import MarkdownRenderer
from storage.admin import AdminStore, member_target
from storage.base import HistoryStore
from storage.seen import MemorySeenEvents, SeenEvents, seen_key

DEDUPE_SIZE = 4096
STOP_WAIT_SECONDS = 5.0  # how long stop/reset waits for a cancelled answer to unwind


@dataclass(slots=True, eq=False)
class _Session:
    """A session with chat work: the messages waiting behind the running one, and the worker serving them.

    It exists only while there is work: the worker starts with the first message and removes the
    session when its queue is empty, so an idle session costs nothing here (its settings are cached
    in SessionSettings) and no finished job, event or frame stays referenced.
    """

    # each queued job with the session's commands that were running when it arrived (it waits for them)
    waiting: deque[tuple[Job, tuple[asyncio.Task[None], ...]]] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None
    answering: bool = False
    running_after: tuple[asyncio.Task[None], ...] = ()  # the `after` of the job being answered


class ConversationManager:
    """Receives every event from every adapter and answers the ones meant for the bot.

    Chat messages go through one FIFO queue per session (served by a worker that exists only while
    the queue has work), so a user's replies stay in order; commands are answered at once, even
    while that session's answer runs. How many model calls run at once is each account's
    `max_concurrency` (llm/pool.py); `[conversation] max_concurrency` adds a global cap only when set.
    """

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        model: ChatModel,
        presets: PresetBook,
        admin: AdminStore,
        images: ImageFetcher | None = None,
        reload: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.presets = presets
        self.admin = admin
        self.images = images or ImageFetcher()
        self._reload = reload or self._no_reload
        self.adapters: dict[str, Adapter] = {}
        self.sessions = SessionSettings(store)
        self.started_at = time.time()
        self._today = (datetime.date.today(), 0)  # (date, messages answered that day)
        self._renderer: MarkdownRenderer | None = None
        self._sessions: dict[str, _Session] = {}  # only sessions with queued or running chat work
        self._commands: dict[str, set[asyncio.Task[None]]] = {}  # each session's running commands
        self._group_slots: dict[str, asyncio.Semaphore] = {}
        self._render_lock = asyncio.Lock()  # one renderer, used by one thread at a time
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.seen: SeenEvents = MemorySeenEvents()  # App.start() puts the database's store here
        self.tasks = TaskSet("conversation")
        self.log = logger.bind(adapter="chat")
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """Use `settings` from now on (at start and on a config reload); queued messages keep going."""
        self.settings = settings
        self.triggers = TriggerRules(settings.trigger)
        self.words = WordFilter(settings.moderation)
        self.commands = CommandTable()
        SessionCommands(settings, self.store, self.sessions, self.model, self.presets, self.stop_session).register(
            self.commands
        )
        AdminCommands(self.admin, self.presets, self._reload, self.status).register(self.commands)
        self.chat = ChatFlow(
            settings,
            self.store,
            self.sessions,
            self.model,
            self.presets,
            self.images,
            self._send,
            self._deliver,
            self._text_limit,
            self.words,
        )
        self._renderer = None  # the font may have changed
        # 0 (the default): no global cap; the accounts' own `max_concurrency` slots are the real limit
        limit = settings.conversation.max_concurrency
        self._slots: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
        )
        self._group_slots.clear()

    async def handle(self, event: Event) -> None:
        """The sink every adapter feeds; returns quickly (work happens in session workers)."""
        if isinstance(event, MessageEvent):
            if await self._is_duplicate(event):
                self.log.debug("dropped a redelivered message {}", event.message_id)
                return
            self._on_message(event)
        elif isinstance(event, RequestEvent):
            self.tasks.spawn(self._on_request(event), name="request")
        elif isinstance(event, NoticeEvent):
            self.log.debug("{} notice from {}", event.kind, event.user_id)
            if event.kind == "poke" and self.settings.response.poke_reply:
                self.tasks.spawn(self._answer_poke(event), name="poke")

    def session_key(self, event: MessageEvent) -> str:
        """Private chats per user; groups per member or shared, per `[conversation] group_scope`."""
        if event.chat_type is ChatType.GROUP:
            if self.settings.conversation.group_scope == "group":
                return f"{event.platform}:group:{event.group_id}"
            return f"{event.platform}:group:{event.group_id}:{event.user_id}"
        return f"{event.platform}:private:{event.user_id}"

    async def _is_duplicate(self, event: MessageEvent) -> bool:
        """The dedupe step: protocols redeliver; adapters with `durable_dedupe` (QQ official, whose
        callbacks can be replayed) are also checked against the ids kept in the database for a day."""
        if not event.message_id:
            return False
        key = (event.adapter, event.chat_type, event.group_id or event.user_id, event.message_id)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > DEDUPE_SIZE:
            self._seen.popitem(last=False)
        # The in-memory check comes first, so the database is asked once per new event.
        adapter = self.adapters.get(event.adapter)
        if adapter is not None and adapter.durable_dedupe:
            return not await self.seen.first_time(seen_key(*key))
        return False

    def _on_message(self, event: MessageEvent) -> None:
        if event.chat_type in (ChatType.TEMP, ChatType.STRANGER) and not self.settings.system.reply_temp:
            return
        if self.admin.is_blocked(event.user_id, event.group_id if event.is_group else ""):
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
        if command is not None:
            # Commands never wait behind the session's running answer (stop and reset are about it).
            running = self._commands.setdefault(key, set())
            limit = self.settings.response.max_queue_size
            if limit and len(running) >= limit:  # a flood of commands must not become a flood of tasks
                self.tasks.spawn(self._reply(event, self.settings.response.queue_full), name="queue-full")
                return
            job = Job(event, prompt, key, admin, command.handler, command.argument)
            task = self.tasks.spawn(self._answer_command(job), name="command")
            running.add(task)
            task.add_done_callback(functools.partial(self._command_done, key))
            return
        response = self.settings.response
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session()
        if response.max_queue_size and len(session.waiting) >= response.max_queue_size:
            self.tasks.spawn(self._reply(event, response.queue_full), name="queue-full")
            return
        # A chat message sent after "切换模型 …" or a reset is answered with that change made.
        session.waiting.append((Job(event, prompt, key, admin), tuple(self._commands.get(key, ()))))
        if session.worker is None:
            session.worker = self.tasks.spawn(self._work(key, session), name=f"session {key}")
        ahead = len(session.waiting) - 1 + session.answering
        if response.queued_notice_size and ahead >= response.queued_notice_size:
            notice = response.queued_notice.replace("{queue_size}", str(ahead))
            self.tasks.spawn(self._reply(event, notice), name="queued-notice")

    def _text_limit(self, job: Job) -> int:
        adapter = self.adapters.get(job.event.adapter)
        return adapter.max_text_length if adapter is not None else 4500

    def _command_done(self, key: str, task: asyncio.Task[None]) -> None:
        running = self._commands.get(key)
        if running is not None:
            running.discard(task)
            if not running:
                del self._commands[key]

    async def _answer_command(self, job: Job) -> None:
        try:
            await self._process(job)
        except Exception:
            self.log.exception("failed to run a command in session {}", job.session_key)

    async def _work(self, key: str, session: _Session) -> None:
        """Serve one session's queue in order, and end (removing the session) when it is empty."""
        try:
            while session.waiting:
                job, session.running_after = session.waiting.popleft()
                session.answering = True
                try:
                    if session.running_after:
                        await asyncio.wait(session.running_after)
                    await self._process(job)
                except Exception:
                    self.log.exception("failed to answer a message in session {}", key)
                finally:
                    session.answering = False
                    session.running_after = ()
                    del job  # the finished job's event must not stay alive while the next one runs
        finally:
            # Also when stopped: the messages queued behind a cancelled answer go with it.
            session.waiting.clear()
            if self._sessions.get(key) is session:
                del self._sessions[key]

    async def stop_session(self, key: str) -> bool:
        """Cancel the session's running answer and drop its queued messages; True when there was one.

        Called from a command (stop, reset, loading a preset): only messages sent before that
        command are dropped; later ones wait for it and are then answered. Returns once the
        cancelled answer has unwound (at most STOP_WAIT_SECONDS), so a reset cannot be overtaken
        by it; nothing more of that answer is sent or stored.
        """
        me = asyncio.current_task()
        session = self._sessions.get(key)
        if session is None or session.worker is None or me in session.running_after:
            return False  # nothing, or only messages sent after this command
        del self._sessions[key]
        later = deque(item for item in session.waiting if me in item[1])
        session.waiting.clear()
        if later:
            # They keep their order in a fresh queue; its first message waits for this command.
            fresh = self._sessions[key] = _Session(later)
            fresh.worker = self.tasks.spawn(self._work(key, fresh), name=f"session {key}")
        session.worker.cancel()
        await asyncio.wait({session.worker}, timeout=STOP_WAIT_SECONDS)
        self.log.info("stopped the answer of session {}", key)
        return True

    async def _process(self, job: Job) -> None:
        try:
            if job.command is not None:
                await self._reply(job.event, await job.command(job, job.argument))
            elif self.words.found(job.prompt):
                await self._reply(job.event, self.settings.moderation.input_message)
            else:
                await self._chat(job)
        except StorageError:
            # The store logged the detail; the user learns something went wrong, briefly.
            await self._reply(job.event, failure_text(self.settings.response.error_format, "storage"))

    async def _chat(self, job: Job) -> None:
        """Rate limits first, then the model; a warning follows the answer when the limit is near."""
        event = job.event
        if event.is_group:
            keys = [("group", event.group_id), ("member", member_target(event.group_id, event.user_id))]
        else:
            keys = [("user", event.user_id)]
        # Usage is counted only where a limit applies: with no limits set, no database work at all.
        limited = [key for key in keys if await self.admin.limit_for(*key) is not None]
        check = await self.admin.check(limited)
        ratelimit = self.settings.ratelimit
        if not check.allowed:
            await self._reply(event, ratelimit.exceed)
            return
        if limited:
            await self.admin.record(None, *limited)
        # A busy group gets at most group_concurrency of the global slots at a time.
        async with self._group_slot(event.group_id), self._slots:
            await self.chat.answer(job)
        self._count_answer()
        if check.limit and check.used + 1 >= ratelimit.warning_rate * check.limit:
            warning = (
                ratelimit.warning_msg.replace("{usage}", str(check.used + 1))
                .replace("{limit}", str(check.limit))
                .replace("{current_time}", time.strftime("%H:%M"))
            )
            await self._reply(event, warning.strip(), quote=False)

    def _count_answer(self) -> None:
        day, count = self._today
        today = datetime.date.today()
        self._today = (today, count + 1 if day == today else 1)

    def status(self) -> str:
        """Uptime, platform links, queues and today's answers, for `.状态`."""
        uptime = int(time.time() - self.started_at)
        links = "、".join(f"{name} {'在线' if a.connected else '离线'}" for name, a in self.adapters.items())
        queued = sum(len(session.waiting) for session in self._sessions.values())
        answering = sum(session.answering for session in self._sessions.values())
        day, count = self._today
        today = count if day == datetime.date.today() else 0
        return (
            f"运行时间：{uptime // 86400} 天 {uptime % 86400 // 3600} 小时 {uptime % 3600 // 60} 分\n"
            f"平台连接：{links or '无'}\n"
            f"排队：{queued} 条（{len(self._sessions)} 个会话，{answering} 个正在回答）\n"
            f"今日回答：{today} 条"
        )

    @staticmethod
    async def _no_reload() -> str:
        return "此模式下不能重新加载配置。"

    def _group_slot(self, group_id: str) -> asyncio.Semaphore | contextlib.nullcontext[None]:
        if not group_id:
            return contextlib.nullcontext()
        slot = self._group_slots.get(group_id)
        if slot is None:
            slot = self._group_slots[group_id] = asyncio.Semaphore(self.settings.conversation.group_concurrency)
        return slot

    async def _send(self, job: Job, content: str | Message, quote: bool) -> None:
        await self._reply(job.event, content, quote)

    async def _deliver(self, job: Job, parts: list[str], quote: bool) -> None:
        """A whole answer: a picture (`mode` image, or mixed and long), a forward message when it is
        very long and the platform has them, else text messages."""
        response = self.settings.response
        event = job.event
        adapter = self.adapters.get(event.adapter)
        text = "\n\n".join(parts)
        if response.mode == "image" or (response.mode == "mixed" and len(text) > response.image_threshold):
            png = await self._render(text)
            if png is not None:
                await self._reply(event, (Image(base64=base64.b64encode(png).decode()),), quote)
                return
        limit = adapter.max_text_length if adapter is not None else 4500
        messages = pack(parts, limit)
        if adapter is not None and adapter.max_replies and len(messages) > adapter.max_replies:
            # e.g. the official QQ API: at most 5 replies to one message; the rest goes into the last
            keep = adapter.max_replies - 1
            messages = [*messages[:keep], "\n\n".join(messages[keep:])]
        too_long = response.forward_threshold and len(text) > response.forward_threshold
        if too_long and adapter is not None and adapter.supports_forward:
            name = adapter.nickname or "ChatGPT"
            nodes = tuple(ForwardNode(event.self_id, name, (Text(m),), int(time.time())) for m in messages)
            await self._reply(event, (Forward(nodes=nodes),), quote)
            return
        for message in messages:
            await self._reply(event, message, quote)
            quote = False

    async def _render(self, text: str) -> bytes | None:
        """The answer as a PNG (rendered in a worker thread), or None when rendering failed."""
        try:
            if self._renderer is None:
                from core.render_image import MarkdownRenderer  # Pillow loads only when used

                self._renderer = MarkdownRenderer(self.settings.response.font_path)
            renderer = self._renderer
            async with self._render_lock:
                return await asyncio.to_thread(renderer.render, text)
        except Exception:
            self.log.exception("rendering an answer as an image failed; sending text")
            return None

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

    async def _answer_poke(self, event: NoticeEvent) -> None:
        """Adapters report only pokes aimed at the bot; answer where it happened."""
        adapter = self.adapters.get(event.adapter)
        if adapter is None or self.admin.is_blocked(event.user_id, event.group_id):
            return
        chat = ChatType.GROUP if event.group_id else ChatType.PRIVATE
        target = Target(event.adapter, chat, event.user_id, event.group_id)
        try:
            await adapter.send(target, (Text(self.settings.response.poke_reply),))
        except BotError as exc:
            self.log.error("answering a poke from {} failed: {}", event.user_id, exc)

    async def _on_request(self, event: RequestEvent) -> None:
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

    async def drain(self) -> None:
        """Wait until every chat message already queued has been answered (and commands have run)."""
        while self._sessions or len(self.tasks):
            workers = {s.worker for s in self._sessions.values() if s.worker is not None}
            if workers:
                await asyncio.wait(workers)
            else:
                await asyncio.sleep(0.01)  # only commands and notices left; they finish quickly

    async def stop(self, timeout: float = 3.0) -> None:
        """Abandon queued and in-flight work (at most `timeout` seconds)."""
        await self.tasks.close(timeout)
        self._sessions.clear()
        self._commands.clear()
        await self.images.close()
