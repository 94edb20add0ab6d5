"""The one failure model for client-side links: a pure classifier, the reconnect loop, and link health."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from core.backoff import Backoff
from core.errors import AdapterError, NotConnectedError

HEALTHY_SECONDS = 30.0  # a link that stayed up this long was healthy: the next outage starts from 1 s


class Verdict(enum.Enum):
    """What to do after a link's connection ended."""

    RETRY = "retry"  # connect again after the backoff
    RESUME = "resume"  # connect again and continue the same session (QQ gateway, Satori sn)
    REIDENTIFY = "re-identify"  # connect again as a new session
    FATAL = "fatal"  # the peer refused us for good (credentials, intents): stop this link


class LinkError(AdapterError):
    """A connection ended for a reason the link itself understood; `verdict` says what comes next."""

    verdict = Verdict.RETRY


class ResumeLink(LinkError):
    """The peer asked for a reconnect that continues the session."""

    verdict = Verdict.RESUME


class ReidentifyLink(LinkError):
    """The session is gone: connect again as a new one."""

    verdict = Verdict.REIDENTIFY


class FatalLinkError(LinkError):
    """The peer refused this bot for good; the text is the one line the user reads."""

    verdict = Verdict.FATAL


# Network-level failures: expected while a peer is down, logged as one line without a traceback.
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ConnectionError)


def classify(exc: BaseException) -> Verdict:
    """The verdict for an exception that ended a connection: known kinds by type, unknown = retry."""
    if isinstance(exc, LinkError):
        return exc.verdict
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (401, 403):
        return Verdict.FATAL  # the peer rejected our credentials at the upgrade
    return Verdict.RETRY


def is_expected(exc: BaseException) -> bool:
    """Network trouble, a peer gone away and the link's own reasons need one line; anything else is a
    bug worth a traceback."""
    return isinstance(exc, (LinkError, NotConnectedError, *NETWORK_ERRORS))


def describe(exc: BaseException) -> str:
    """A short reason for the log: the link's own text, an HTTP status, or the exception's type."""
    if isinstance(exc, LinkError):
        return str(exc)
    if isinstance(exc, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LinkState(enum.Enum):
    """Where a link is; `UP` and `LISTENING` count as healthy."""

    CONNECTING = "connecting"
    UP = "up"
    LISTENING = "listening"
    DOWN = "down"
    STOPPED = "stopped"  # a fatal verdict: not retried until the bot restarts


HEALTHY_STATES = (LinkState.UP, LinkState.LISTENING)


@dataclass(slots=True)
class LinkStatus:
    """One link's health as data (for /healthz, --check and the console)."""

    name: str
    state: LinkState = LinkState.CONNECTING
    since: float = field(default_factory=time.time)
    last_event: float | None = None
    reason: str = ""

    def set(self, state: LinkState, reason: str = "") -> None:
        """Move to `state`; `since` changes only when the state does."""
        if state is not self.state:
            self.state = state
            self.since = time.time()
        self.reason = reason

    @property
    def healthy(self) -> bool:
        """Up, or listening for the peer."""
        return self.state in HEALTHY_STATES

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "name": self.name,
            "state": self.state.value,
            "since": round(self.since, 3),
            "last_event": None if self.last_event is None else round(self.last_event, 3),
            "reason": self.reason,
        }


# One connection attempt. It calls `link.up()` once the peer accepted it, returns a reason when the
# connection ended normally, and raises for anything else (classified by `classify`).
Session = Callable[["Link"], Awaitable[str]]
Sleep = Callable[[float], Awaitable[None]]


class Link:
    """A client-side connection kept up until stopped: backoff, logging, failure model and health.

    `run()` returns only when the link is stopped or a fatal verdict ends it (`fatal` then holds
    the reason). Backoff, sleep and clock are injectable so tests wait on events, not time.
    `on_verdict` lets the session forget or keep its resume state.
    """

    def __init__(
        self,
        name: str,
        session: Session,
        log: Any,
        *,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.name = name
        self.session = session
        self.log = log
        self.backoff = backoff or Backoff(min_delay=1.0, max_delay=30.0)
        self.sleep = sleep
        self.clock = clock
        self.on_verdict = on_verdict
        self.status = LinkStatus(name)
        self.fatal = ""
        self.stopping = False
        self._up_at: float | None = None
        self._outage_logged = False  # "down" was said: "back up" is said once when it recovers

    def up(self) -> None:
        """The session is connected and accepted: healthy from now on."""
        if self.status.state is not LinkState.UP:
            self._up_at = self.clock()
            self.status.set(LinkState.UP)
            if self._outage_logged:
                self._outage_logged = False
                self.log.info("{} is back up", self.name)

    def saw_event(self) -> None:
        """An input arrived on the link (for the health endpoint's last event time)."""
        self.status.last_event = time.time()

    def stop(self) -> None:
        """End the loop after the current attempt (the owner closes the connection)."""
        self.stopping = True

    async def run(self) -> None:
        """Connect, and reconnect after every failure, until stopped or fatal."""
        traceback_logged = False
        while not self.stopping:
            self._up_at = None
            self.status.set(LinkState.CONNECTING, self.status.reason)
            failure: BaseException | None = None
            try:
                reason = await self.session(self)
                verdict = Verdict.RETRY
            except Exception as exc:  # every failure is classified: none ends the link silently
                failure, reason, verdict = exc, describe(exc), classify(exc)
            if self.stopping:
                break
            if self._up_at is not None:
                traceback_logged = False  # a new outage starts
                if self.clock() - self._up_at > HEALTHY_SECONDS:
                    self.backoff.reset()
            if self.on_verdict is not None:
                self.on_verdict(verdict)
            if verdict is Verdict.FATAL:
                self.fatal = reason
                self.status.set(LinkState.STOPPED, reason)
                self.log.error("{} stopped: {}; not reconnecting until the bot restarts", self.name, reason)
                return
            delay = self.backoff.next_delay()
            self.status.set(LinkState.DOWN, reason)
            if failure is not None and not is_expected(failure) and not traceback_logged:
                traceback_logged = self._outage_logged = True
                self.log.opt(exception=failure).warning(
                    "{} down ({}, unexpected); retrying in {:.1f}s", self.name, reason, delay
                )
            elif not self._outage_logged:
                self._outage_logged = True
                self.log.warning("{} down ({}); retrying in {:.1f}s", self.name, reason, delay)
            else:
                self.log.debug("{} still down ({}); next try in {:.1f}s", self.name, reason, delay)
            await self.sleep(delay)
        self.status.set(LinkState.DOWN, "stopped")
