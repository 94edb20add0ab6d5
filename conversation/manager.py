"""The conversation manager: the message pipeline of steps, per-session queues and their workers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loguru import logger

from adapters.base import Adapter
from conversation import pipeline
from conversation.admin import AdminCommands
from conversation.chat import ChatFlow
from conversation.commands import CommandTable, SessionCommands
from conversation.job import Job, failure_text
from conversation.moderation import WordFilter
from conversation.pipeline import Context, Next, Step
from conversation.presets import PresetBook
from conversation.replier import Replier
from conversation.sessions import SessionSettings
from conversation.tools import ToolBox
from conversation.triggers import TriggerRules
from conversation.voice import as_text, spoken, worth_transcribing
from core.config import Settings
from core.errors import StorageError
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent
from core.message import Voice
from core.metrics import Metrics
from core.tasks import TaskSet
from llm.base import ChatModel
from llm.images import ImageFetcher
from storage.admin import DRAW, AdminStore
from storage.base import HistoryStore
from storage.seen import MemorySeenEvents, SeenEvents, seen_key
from voice.errors import VoiceError
from voice.service import VoiceService

DEDUPE_SIZE = 4096
STOP_WAIT_SECONDS = 5.0  # how long stop/reset waits for a cancelled answer to unwind
SESSION_SETTINGS_TTL = 5.0  # seconds a session's settings are served from memory before being read again
SHARED_REFRESH_SECONDS = 3.0  # how often limits and blacklist are read again when processes share the database


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
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.model = model
        self.presets = presets
        self.admin = admin
        self.images = images or ImageFetcher()
        self.voice = VoiceService(settings, self.images, self.metrics)
        self.toolbox = ToolBox(settings)  # App.start() hands it the MCP servers
        self._reload = reload or self._no_reload
        self._adapters: dict[str, Adapter] = {}
        # Another process on the same database may change a session's preset or model: re-read after a
        # while. A database of one process never changes behind its back: no reads on the message path.
        self.sessions = SessionSettings(store, ttl=SESSION_SETTINGS_TTL if settings.database.is_shared else None)
        self.started_at = time.time()
        self._today = (datetime.date.today(), 0)  # (date, messages answered that day)
        self._sessions: dict[str, _Session] = {}  # only sessions with queued or running chat work
        self._commands: dict[str, set[asyncio.Task[None]]] = {}  # each session's running commands
        self._group_slots: dict[str, asyncio.Semaphore] = {}
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.seen: SeenEvents = MemorySeenEvents()  # App.start() puts the database's store here
        self.tasks = TaskSet("conversation")
        self._refresher: asyncio.Task[None] | None = None
        self.log = logger.bind(adapter="chat")
        self.replier = Replier(settings, self._adapters, self.metrics, self.voice)
        # The order DESIGN.md gives; each step may end the message's way (a reply, or silence).
        self.steps: list[Step] = [
            self._dedupe,
            self._listen,
            self._trigger,
            self._access,
            self._command,
            self._rate_limit,
            self._enqueue,
        ]
        self.apply(settings)

    @property
    def adapters(self) -> dict[str, Adapter]:
        """The running adapters by instance name (the app hands its own dict, which it keeps updating)."""
        return self._adapters

    @adapters.setter
    def adapters(self, adapters: dict[str, Adapter]) -> None:
        self._adapters = self.replier.adapters = adapters

    def apply(self, settings: Settings) -> None:
        """Use `settings` from now on (at start and on a config reload); queued messages keep going."""
        self.settings = settings
        self.triggers = TriggerRules(settings.trigger)
        self.words = WordFilter(settings.moderation)
        self.commands = CommandTable()
        self.voice.apply(settings)
        self.toolbox.apply(settings)
        SessionCommands(
            settings, self.store, self.sessions, self.model, self.presets, self.stop_session, self.voice, self.toolbox
        ).register(self.commands)
        AdminCommands(self.admin, self.presets, self._reload, self.status).register(self.commands)
        self.chat = ChatFlow(
            settings,
            self.store,
            self.sessions,
            self.model,
            self.presets,
            self.images,
            self.replier,
            self.words,
            self.toolbox,
            self.admin,
            self.metrics,
        )
        self.replier.apply(settings)
        # 0 (the default): no global cap; the accounts' own `max_concurrency` slots are the real limit
        limit = settings.conversation.max_concurrency
        self._slots: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
        )
        self._group_slots.clear()
        if settings.database.is_shared and self._refresher is None:
            self._refresher = self.tasks.spawn(self._refresh_shared_state(), name="shared-state")

    async def _refresh_shared_state(self) -> None:
        """With several processes on the database: read limits and blacklist again every few seconds,
        so a change made through another process applies here too (usage is always counted in the
        database; session settings are re-read by SessionSettings)."""
        while True:
            await asyncio.sleep(SHARED_REFRESH_SECONDS)
            try:
                await self.admin.load()
            except StorageError:
                pass  # the store logged it; the cached limits stay in use until the next try
            except Exception:
                self.log.exception("reading limits and blacklist again failed")

    async def handle(self, event: Event) -> None:
        """The sink every adapter feeds; returns quickly (work happens in session workers)."""
        if isinstance(event, MessageEvent):
            self.metrics.message_in(event.adapter)
            ctx = Context(self.adapters.get(event.adapter))
            try:
                await pipeline.run(self.steps, event, ctx)
            finally:
                if not ctx.handed_off:  # ignored, or stopped by a step: nothing more will be said
                    self._answered(event)
        elif isinstance(event, RequestEvent):
            self.tasks.spawn(self.replier.answer_request(event), name="request")
        elif isinstance(event, NoticeEvent):
            self.log.debug("{} notice from {}", event.kind, event.user_id)
            poke = event.kind == "poke" and self.settings.response.poke_reply
            if poke and not self.admin.is_blocked(event.user_id, event.group_id):
                self.tasks.spawn(self.replier.answer_poke(event), name="poke")

    def session_key(self, event: MessageEvent) -> str:
        """Private chats per user; groups per member or shared, per `[conversation] group_scope`."""
        if event.chat_type is ChatType.GROUP:
            if self.settings.conversation.group_scope == "group":
                return f"{event.platform}:group:{event.group_id}"
            return f"{event.platform}:group:{event.group_id}:{event.user_id}"
        return f"{event.platform}:private:{event.user_id}"

    async def _dedupe(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """Protocols redeliver; adapters with `durable_dedupe` (QQ official, whose callbacks can be
        replayed), and every adapter when processes share the database, are also checked against the
        ids kept in the database for a day."""
        if not event.message_id:
            await next(event, ctx)
            return
        # With the bot's own account in it: two accounts in one group see the same message, and each
        # decides for itself whether it is addressed.
        key = (event.self_id, event.adapter, event.chat_type, event.group_id or event.user_id, event.message_id)
        if key in self._seen:
            self.log.debug("dropped a redelivered message {}", event.message_id)
            return
        self._seen[key] = None
        if len(self._seen) > DEDUPE_SIZE:
            self._seen.popitem(last=False)
        # The in-memory check comes first, so the database is asked once per new event: always for
        # platforms that replay events, and for every event when several processes share the database.
        durable = self.settings.database.is_shared or (ctx.adapter is not None and ctx.adapter.durable_dedupe)
        if durable and not await self.seen.first_time(seen_key(*key)):
            self.log.debug("dropped a redelivered message {}", event.message_id)
            return
        await next(event, ctx)

    async def _listen(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """A voice message goes on as what was said (`[voice] stt_model`). Transcribing waits on a
        server, so it runs in its own task: the adapter's next message is not held up."""
        voice = spoken(event)
        if voice is None or not self.voice.stt_enabled or not worth_transcribing(self.settings, event):
            await next(event, ctx)
            return
        if self.admin.is_blocked(event.user_id, event.group_id if event.is_group else ""):
            return  # a blocked sender costs no transcription
        ctx.handed_off = True
        self.tasks.spawn(self._transcribed(event, voice, ctx, next), name="transcribe")

    async def _transcribed(self, event: MessageEvent, voice: Voice, ctx: Context, next: Next) -> None:
        ctx.handed_off = False
        try:
            try:
                transcript = await self.voice.transcribe(voice)
            except VoiceError as exc:
                self.log.warning("the voice message {} was not understood: {}", event.message_id or "-", exc)
                if not event.is_group or event.to_me:
                    ctx.handed_off = True
                    await self._say_and_finish(event, self.settings.response.voice_not_understood)
                return
            self.log.debug("voice message {} said {!r}", event.message_id or "-", transcript)
            ctx.spoken = True
            await next(as_text(event, transcript), ctx)
        finally:
            if not ctx.handed_off:
                self._answered(event)

    async def _trigger(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """Only messages meant for the bot (prefix, mention, private chat rules) go on, as their prompt."""
        prompt = self.triggers.prompt_of(event, ctx.adapter.nickname if ctx.adapter is not None else "")
        if prompt is None:
            return
        ctx.prompt = prompt
        await next(event, ctx)

    async def _access(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """Temp and stranger chats (unless `reply_temp`), blocked users and groups, and admin-only
        commands from anyone else get no reaction at all."""
        if event.chat_type in (ChatType.TEMP, ChatType.STRANGER) and not self.settings.system.reply_temp:
            return
        if self.admin.is_blocked(event.user_id, event.group_id if event.is_group else ""):
            return
        ctx.admin = ctx.adapter is not None and event.user_id in ctx.adapter.managers
        ctx.command = self.commands.match(ctx.prompt)
        if ctx.command is not None and ctx.command.admin_only and not ctx.admin:
            return
        await next(event, ctx)

    async def _command(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """Commands are answered at once, never queued behind the session's running answer (stop and
        reset are about it); anything else goes on as a chat message."""
        command = ctx.command
        key = ctx.session_key = self.session_key(event)
        if command is None:
            if ctx.prompt or self.chat.image_urls_in(event):
                await next(event, ctx)
            return
        running = self._commands.setdefault(key, set())
        limit = self.settings.response.max_queue_size
        if limit and len(running) >= limit:  # a flood of commands must not become a flood of tasks
            self._say(event, ctx, self.settings.response.queue_full, "queue-full")
            return
        if command.quota and not await self._within_limit(event, ctx, command.quota):
            return
        job = Job(
            event, ctx.prompt, key, ctx.admin, command.handler, command.argument, ctx.rate, command.quota, ctx.spoken
        )
        ctx.handed_off = True
        task = self.tasks.spawn(self._answer_command(job), name="command")
        running.add(task)
        task.add_done_callback(functools.partial(self._command_done, key))

    async def _rate_limit(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """A sender over the hourly limit gets the `exceed` text at once and nothing is queued;
        a message let in is counted now. With no limits set there is no database work at all."""
        if await self._within_limit(event, ctx, ""):
            await next(event, ctx)

    async def _within_limit(self, event: MessageEvent, ctx: Context, quota: str) -> bool:
        """Whether the sender is within the hourly limits of `quota` ("" messages, DRAW pictures),
        counting this use; when not, they are told (`exceed` / `draw_exceed`) and False returned."""
        try:
            # checked and counted in one step: a burst from one sender cannot slip past the limit
            ctx.rate = await self.admin.take_for_sender(quota, event.user_id, event.group_id if event.is_group else "")
            if ctx.rate is not None and not ctx.rate.allowed:
                ratelimit = self.settings.ratelimit
                self._say(event, ctx, ratelimit.draw_exceed if quota == DRAW else ratelimit.exceed, "rate-limited")
                self.metrics.answer("rate_limited")
                return False
        except StorageError:
            # The store logged the detail; the user learns something went wrong, briefly.
            self._say(event, ctx, failure_text(self.settings.response.error_format, "storage"), "storage-failed")
            return False
        return True

    def _say(self, event: MessageEvent, ctx: Context, text: str, name: str) -> None:
        """Send `text` as the whole answer to `event`, without holding up the pipeline."""
        ctx.handed_off = True
        self.tasks.spawn(self._say_and_finish(event, text), name=name)

    async def _say_and_finish(self, event: MessageEvent, text: str) -> None:
        try:
            await self.replier.send(event, text)
        finally:
            self._answered(event)

    def _answered(self, event: MessageEvent) -> None:
        """Tell the adapter the bot is done with `event` (see Adapter.answered)."""
        adapter = self.adapters.get(event.adapter)
        if adapter is not None:
            try:
                adapter.answered(event)
            except Exception:
                self.log.exception("{} failed to close message {}", event.adapter, event.message_id)

    async def _enqueue(self, event: MessageEvent, ctx: Context, next: Next) -> None:
        """The last step: the session's FIFO queue, served by its worker (started when needed)."""
        key = ctx.session_key
        response = self.settings.response
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session()
        if response.max_queue_size and len(session.waiting) >= response.max_queue_size:
            self._say(event, ctx, response.queue_full, "queue-full")
            self.metrics.answer("queue_full")
            return
        # A chat message sent after "切换模型 …" or a reset is answered with that change made.
        job = Job(event, ctx.prompt, key, ctx.admin, rate=ctx.rate, spoken=ctx.spoken)
        ctx.handed_off = True
        session.waiting.append((job, tuple(self._commands.get(key, ()))))
        if session.worker is None:
            session.worker = self.tasks.spawn(self._work(key, session), name=f"session {key}")
        ahead = len(session.waiting) - 1 + session.answering
        if response.queued_notice_size and ahead >= response.queued_notice_size:
            notice = response.queued_notice.replace("{queue_size}", str(ahead))
            self.tasks.spawn(self.replier.send(event, notice), name="queued-notice")
        await next(event, ctx)

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
        finally:
            self._answered(job.event)

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
                    self._answered(job.event)
                    del job  # the finished job's event must not stay alive while the next one runs
        finally:
            # Also when stopped: the messages queued behind a cancelled answer go with it.
            for job, _ in session.waiting:
                self._answered(job.event)
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
        for job, after in session.waiting:
            if me not in after:
                self._answered(job.event)
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
                await self.replier.send(job.event, await job.command(job, job.argument))
                await self._warn_near_limit(job)
            elif self.words.found(job.prompt):
                self.metrics.answer("refused")
                await self.replier.send(job.event, self.settings.moderation.input_message)
            else:
                await self._chat(job)
        except StorageError:
            # The store logged the detail; the user learns something went wrong, briefly.
            if job.command is None:
                self.metrics.answer("storage")
            await self.replier.send(job.event, failure_text(self.settings.response.error_format, "storage"))

    async def _chat(self, job: Job) -> None:
        """The model's answer; a warning follows it when the sender's rate limit is near."""
        event = job.event
        # A busy group gets at most group_concurrency of the global slots at a time.
        try:
            async with self._group_slot(event.group_id), self._slots:
                outcome = await self.chat.answer(job)
        except asyncio.CancelledError:
            self.metrics.answer("stopped")
            raise
        self.metrics.answer(outcome)
        self._count_answer()
        await self._warn_near_limit(job)

    async def _warn_near_limit(self, job: Job) -> None:
        """After an answer (or a drawing), the warning text when the sender's limit is nearly used."""
        check, ratelimit = job.rate, self.settings.ratelimit
        if check is not None and check.limit and check.used + 1 >= ratelimit.warning_rate * check.limit:
            template = ratelimit.draw_warning_msg if job.quota == DRAW else ratelimit.warning_msg
            warning = (
                template.replace("{usage}", str(check.used + 1))
                .replace("{limit}", str(check.limit))
                .replace("{current_time}", time.strftime("%H:%M"))
            )
            await self.replier.send(job.event, warning.strip(), quote=False)

    def _count_answer(self) -> None:
        day, count = self._today
        today = datetime.date.today()
        self._today = (today, count + 1 if day == today else 1)

    def queues(self) -> dict[str, int]:
        """Work in hand: sessions with chat work, messages waiting, answers running, commands running."""
        sessions = list(self._sessions.values())
        return {
            "sessions": len(sessions),
            "waiting": sum(len(session.waiting) for session in sessions),
            "answering": sum(session.answering for session in sessions),
            "commands": sum(len(tasks) for tasks in self._commands.values()),
        }

    def status(self) -> str:
        """Uptime, platform links, queues and today's answers, for `.状态`."""
        uptime = int(time.time() - self.started_at)
        links = "、".join(
            f"{name} {'在线' if a.connected else '离线'}" for name, a in self.adapters.items() if a.counts_for_health
        )
        queues = self.queues()
        day, count = self._today
        today = count if day == datetime.date.today() else 0
        lines = [
            f"运行时间：{uptime // 86400} 天 {uptime % 86400 // 3600} 小时 {uptime % 3600 // 60} 分",
            f"平台连接：{links or '无'}",
            f"排队：{queues['waiting']} 条（{queues['sessions']} 个会话，{queues['answering']} 个正在回答）",
            f"今日回答：{today} 条",
        ]
        if self.voice.stt_enabled or self.voice.tts_enabled:
            lines.append(self.voice.summary())
        if self.toolbox.enabled:
            lines.append(self._tool_status())
        return "\n".join(lines)

    def _tool_status(self) -> str:
        """`.状态`'s line about tools: how many there are, and each MCP server's state."""
        line = f"工具：{len(self.toolbox.all())} 个"
        mcp = self.toolbox.mcp
        if mcp is not None:
            states = {"up": "正常", "starting": "启动中", "down": "未连接"}
            servers = "、".join(
                f"{server['name']} {states.get(server['state'], server['state'])}（{server['tools']} 个工具）"
                for server in mcp.status()
            )
            line += f"；MCP：{servers}"
        return line

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
        await self.voice.close()
        await self.images.close()
