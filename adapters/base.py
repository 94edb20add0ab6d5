"""The Adapter interface every protocol implements, its outbox, and the adapter registry."""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from loguru import logger

from core.errors import AdapterError, NotConnectedError
from core.event import Event, RequestEvent, Target
from core.message import Message
from core.tasks import TaskSet

EventSink = Callable[[Event], Awaitable[None]]

AdapterFactory = Callable[[str, Any, EventSink], "Adapter"]


def parse_frame(log: Any, data: str | bytes) -> dict[str, Any] | None:
    """A wire frame as a JSON object, or None: a malformed one is logged and dropped, never raised."""
    try:
        frame = json.loads(data)
    except ValueError:
        log.warning("dropped a malformed frame ({} bytes)", len(data))
        return None
    if not isinstance(frame, dict):
        log.warning("dropped a frame that is not a JSON object")
        return None
    return frame


def json_object(value: object) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one: wire fields may be missing or malformed."""
    return value if isinstance(value, dict) else {}


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
        await self.tasks.close()

    @abstractmethod
    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        """Send now; raise NotConnectedError when the link is down. Returns the message id."""

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
