"""The Adapter interface every protocol implements, its outbox, and the adapter registry."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from loguru import logger

from adapters.frames import MAX_BODY, MAX_FRAME, event_kind, parse_frame, preview
from adapters.link import Link, LinkState, LinkStatus
from core.backoff import Backoff
from core.errors import AdapterError, NotConnectedError
from core.event import Event, MessageEvent, RequestEvent, Target
from core.message import At, Message, Quote
from core.tasks import TaskSet

EventSink = Callable[[Event], Awaitable[None]]

AdapterFactory = Callable[[str, Any, EventSink], "Adapter"]


def json_object(value: object) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one: wire fields may be missing or malformed."""
    return value if isinstance(value, dict) else {}


def addressed_to(message: Message, self_id: str) -> bool:
    """Whether a group message @-mentions the bot or quotes one of its messages."""
    return bool(self_id) and any(
        (isinstance(seg, At) and seg.target == self_id) or (isinstance(seg, Quote) and seg.sender_id == self_id)
        for seg in message
    )


@dataclass(slots=True)
class AdapterStatus:
    """One platform section's health as data: its links, and replies waiting for them."""

    instance: str
    protocol: str
    links: list[LinkStatus] = field(default_factory=list)
    outbox: int = 0

    @property
    def healthy(self) -> bool:
        """Every link is up or listening (an adapter with no link yet is not)."""
        return bool(self.links) and all(link.healthy for link in self.links)

    @property
    def stopped(self) -> bool:
        """Every link has stopped for good (a fatal verdict)."""
        return bool(self.links) and all(link.state is LinkState.STOPPED for link in self.links)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "platform": self.instance,
            "protocol": self.protocol,
            "healthy": self.healthy,
            "outbox": self.outbox,
            "links": [link.as_dict() for link in self.links],
        }


@dataclass(slots=True)
class _Pending:
    target: Target
    message: Message
    quote: str | None
    queued_at: float


class Adapter(ABC):
    """One link to one QQ account through one protocol.

    Subclasses translate wire <-> core only: they decode frames into events for `sink`, and
    implement `_send`. The base keeps replies produced while the link is down in a bounded
    outbox and flushes it when the subclass calls `_link_up()`.
    """

    protocol: ClassVar[str] = ""
    max_text_length: ClassVar[int] = 4500
    supports_forward: ClassVar[bool] = False  # can send merged-forward (合并转发) messages
    max_replies: ClassVar[int] = 0  # replies allowed per incoming message (0: no limit)
    outbox_size: ClassVar[int] = 200
    outbox_max_age: ClassVar[float] = 3600.0
    max_frame: ClassVar[int] = MAX_FRAME  # one WebSocket frame
    max_body: ClassVar[int] = MAX_BODY  # one webhook body or SSE event
    durable_dedupe: ClassVar[bool] = False  # events can be replayed: remember their ids in the database
    counts_for_health: ClassVar[bool] = True  # a QQ link (the console's chat page is not)
    wants_drafts: ClassVar[bool] = False  # shows a streamed answer live (`draft`) before its messages
    # The audio format a `Voice(base64=…)` reply must be in: "silk" for QQ, "mp3" for the v2 HTTP API's clients,
    # "" when the platform cannot send voice at all (the answer then goes out as text).
    voice_format: ClassVar[str] = "silk"

    def __init__(self, instance: str, settings: Any, sink: EventSink) -> None:
        self.instance = instance
        self.settings = settings
        self.sink = sink
        self.log = logger.bind(adapter=instance)
        self.tasks = TaskSet(instance)
        self._outbox: deque[_Pending] = deque()
        self._link_ready = asyncio.Event()
        # Who may run admin commands on this link: the section's manager ids (`manager_qq`, ...).
        self.managers: frozenset[str] = frozenset(getattr(settings, "manager_qq", ()) or ())
        self.nickname = ""  # the bot's name on the platform, once the adapter has learned it
        self.links: list[LinkStatus] = []  # every link of this adapter, for health
        self.on_stopped: Callable[[], None] | None = None  # told when every link has stopped for good
        self.stopping = False

    # --- health and supervision -------------------------------------------------------------------

    def status(self) -> AdapterStatus:
        """This adapter's links and outbox, as data."""
        return AdapterStatus(self.instance, self.protocol, list(self.links), len(self._outbox))

    def listener_status(self, name: str) -> LinkStatus:
        """A link on which the peer dials the bot: healthy while the bot listens."""
        status = LinkStatus(name, LinkState.LISTENING)
        self.links.append(status)
        return status

    def supervise(self, link: Link) -> asyncio.Task[Any]:
        """Run `link` in an owned task that is restarted if it ever ends other than by stop or a fatal verdict."""
        self.links.append(link.status)
        return self.tasks.spawn(self._supervised(link), name=f"{self.instance}: {link.name}")

    async def _supervised(self, link: Link) -> None:
        restarts = Backoff(min_delay=1.0, max_delay=30.0)
        while not (self.stopping or link.stopping):
            try:
                await link.run()
            except Exception:
                self.log.exception("{}: the link task failed; restarting it", link.name)
            else:
                if link.fatal:
                    if self.status().stopped and self.on_stopped is not None:
                        self.on_stopped()
                    return
                if self.stopping or link.stopping:
                    return
                self.log.error("{}: the link task ended unexpectedly; restarting it", link.name)
            await link.sleep(restarts.next_delay())

    # --- the error boundary around every input ----------------------------------------------------

    async def receive(
        self,
        data: str | bytes,
        handle: Callable[[dict[str, Any]], Awaitable[object]],
        link: LinkStatus | None = None,
        limit: int | None = None,
    ) -> None:
        """One frame, webhook body or SSE event: parsed within the caps, handled, never raised.

        A malformed input is logged and dropped; an exception while handling it (a wrong field
        type, a bug) is logged once with the protocol, the event type and the frame's start.
        """
        frame = parse_frame(self.log, data, self.max_frame if limit is None else limit)
        if frame is None:
            return
        if link is not None:
            link.last_event = time.time()
        await self.guarded(frame, handle)

    async def guarded(self, frame: Mapping[str, Any], handle: Callable[[Any], Awaitable[object]]) -> None:
        """Run `handle(frame)`; any exception is logged and the frame dropped."""
        try:
            await handle(frame)
        except Exception:
            self.log.opt(exception=True).error(
                "dropped a {} frame ({}) that could not be handled: {}",
                self.protocol,
                event_kind(frame),
                preview(frame),
            )

    @property
    def ws_options(self) -> dict[str, Any]:
        """aiohttp WebSocket options every link shares. TEXT frames stay bytes, so invalid UTF-8 is
        dropped by `receive` instead of aiohttp closing the socket (1007); aiohttp refuses a frame of
        exactly `max_msg_size` bytes, so the limit is one over the inclusive `max_frame`."""
        return {"max_msg_size": self.max_frame + 1, "decode_text": False}

    @property
    def connected(self) -> bool:
        """True while the platform link is up and verified."""
        return self._link_ready.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the link; whether it is up."""
        try:
            async with asyncio.timeout(timeout):
                await self._link_ready.wait()
        except TimeoutError:
            return False
        return True

    @abstractmethod
    async def start(self) -> None:
        """Begin listening or connecting; returns without waiting for the peer."""

    async def stop(self) -> None:
        """Close listeners and connections and cancel owned tasks."""
        self.stopping = True
        await self.tasks.close()

    @abstractmethod
    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        """Send now; raise NotConnectedError when the link is down. Returns the message id."""

    async def draft(self, event: MessageEvent, text: str) -> None:  # noqa: B027 (a hook: most platforms need nothing)
        """The visible text of the answer to `event` so far (only for `wants_drafts` platforms)."""

    def answered(self, event: MessageEvent) -> None:  # noqa: B027 (a hook: most platforms need nothing)
        """The bot has said all it will say about `event` (possibly nothing: an ignored message).

        Called once per message event this adapter delivered; a platform whose peer waits for the
        whole answer (the HTTP API) closes it here. Must not block or raise.
        """

    async def answer_request(self, event: RequestEvent, approve: bool) -> None:
        """Accept or decline a friend request or group invitation; raises AdapterError."""
        raise AdapterError(f"{self.protocol} cannot answer {event.kind} requests")

    async def send(self, target: Target, message: Message, quote: str | None = None) -> str | None:
        """Send `message`, or queue it when the link is down (sent when it comes back)."""
        if self.connected:
            try:
                return await self._send(target, message, quote)
            except NotConnectedError:
                pass
        self._queue(_Pending(target, message, quote, time.monotonic()))
        return None

    def _queue(self, item: _Pending) -> None:
        if len(self._outbox) >= self.outbox_size:
            dropped = self._outbox.popleft()
            self.log.warning("outbox full, dropped the oldest reply to {}", dropped.target.describe())
        self._outbox.append(item)
        self.log.warning("link down: reply to {} queued ({} waiting)", item.target.describe(), len(self._outbox))

    def _link_up(self) -> None:
        """Mark the link usable and flush replies queued while it was down."""
        self._link_ready.set()
        if self._outbox:
            self.tasks.spawn(self._flush(), name=f"{self.instance}-flush")

    def _link_down(self) -> None:
        self._link_ready.clear()

    async def _flush(self) -> None:
        sent = 0
        while self._outbox and self.connected:
            item = self._outbox.popleft()
            if time.monotonic() - item.queued_at > self.outbox_max_age:
                self.log.warning(
                    "dropped a queued reply to {}: older than {}s", item.target.describe(), self.outbox_max_age
                )
                continue
            try:
                await self._send(item.target, item.message, item.quote)
                sent += 1
            except NotConnectedError:
                self._outbox.appendleft(item)
                return
            except Exception:
                self.log.exception("sending a queued reply to {} failed", item.target.describe())
        if sent:
            self.log.info("sent {} queued repl{}", sent, "y" if sent == 1 else "ies")
