"""The failure model: the pure classifier, the reconnect loop with injected backoff and clock, supervision."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from loguru import logger

from adapters.base import Adapter
from adapters.link import (
    FatalLinkError,
    Link,
    LinkError,
    LinkState,
    ReidentifyLink,
    ResumeLink,
    Verdict,
    classify,
)
from core.backoff import Backoff
from core.event import Target
from core.message import Message


def handshake(status: int) -> aiohttp.WSServerHandshakeError:
    request = aiohttp.RequestInfo(aiohttp.client_reqrep.URL("ws://x/"), "GET", {}, aiohttp.client_reqrep.URL("ws://x/"))  # type: ignore[arg-type]
    return aiohttp.WSServerHandshakeError(request, (), status=status)


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ConnectionRefusedError(), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (aiohttp.ClientConnectionError(), Verdict.RETRY),
        (RuntimeError("a bug"), Verdict.RETRY),
        (TypeError("'int' object is not iterable"), Verdict.RETRY),
        (RecursionError(), Verdict.RETRY),
        (LinkError("closed by the peer"), Verdict.RETRY),
        (ResumeLink("4009"), Verdict.RESUME),
        (ReidentifyLink("4006"), Verdict.REIDENTIFY),
        (FatalLinkError("verifyKey refused"), Verdict.FATAL),
        (handshake(401), Verdict.FATAL),
        (handshake(403), Verdict.FATAL),
        (handshake(502), Verdict.RETRY),
    ],
)
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) is verdict


class Script:
    """A link session that plays one step per attempt: raise, return, or go up then return."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.attempts = 0
        self.done = asyncio.Event()

    async def __call__(self, link: Link) -> str:
        self.attempts += 1
        step = self.steps.pop(0) if self.steps else "stop"
        if not self.steps:
            self.done.set()
        if step == "stop":
            link.stop()
            return "stopped by the test"
        if step == "up":
            link.up()
            return "closed after being up"
        if isinstance(step, BaseException):
            raise step
        return str(step)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


def make_link(script: Script, clock: Clock, lines: list[str], **kwargs: Any) -> Link:
    backoff = Backoff(min_delay=1.0, max_delay=30.0, jitter=0.0)
    return Link("test link", script, logger, backoff=backoff, sleep=clock.sleep, clock=clock, **kwargs)


async def test_unknown_errors_are_retried_with_backoff_and_a_traceback_once_per_outage(log_lines: list[str]) -> None:
    clock = Clock()
    script = Script(RuntimeError("bug one"), RuntimeError("bug two"), OSError("refused"), "up", RuntimeError("bug 3"))
    link = make_link(script, clock, log_lines)
    await link.run()
    assert script.attempts == 6
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]  # the up attempt was short: no reset
    firsts = [line.split("\n")[0] for line in log_lines if line.startswith("test link ")]
    assert firsts == [
        "test link down (RuntimeError: bug one, unexpected); retrying in 1.0s",
        "test link still down (RuntimeError: bug two); next try in 2.0s",
        "test link still down (OSError: refused); next try in 4.0s",
        "test link is back up",
        "test link down (closed after being up); retrying in 8.0s",
        "test link down (RuntimeError: bug 3, unexpected); retrying in 16.0s",
    ]
    # A traceback once per outage: before and after the link was up.
    assert [("Traceback" in line) for line in log_lines if line.startswith("test link ")] == [
        True,
        False,
        False,
        False,
        False,
        True,
    ]


async def test_a_healthy_link_starts_the_next_outage_from_the_shortest_delay() -> None:
    clock = Clock()

    async def long_up(link: Link) -> str:
        link.up()
        clock.now += 31.0
        return "closed"

    attempts: list[Any] = [OSError(), OSError(), long_up, OSError()]

    async def session(link: Link) -> str:
        step = attempts.pop(0) if attempts else None
        if step is None:
            link.stop()
            return "done"
        if isinstance(step, BaseException):
            raise step
        return await step(link)

    link = Link("l", session, logger, backoff=Backoff(jitter=0.0), sleep=clock.sleep, clock=clock)
    await link.run()
    assert clock.sleeps == [1.0, 2.0, 1.0, 2.0]


async def test_fatal_stops_the_link_with_one_line(log_lines: list[str]) -> None:
    clock = Clock()
    script = Script(OSError(), FatalLinkError("verifyKey refused: set [mirai] api_key"), "up")
    link = make_link(script, clock, log_lines)
    await link.run()
    assert script.attempts == 2
    assert link.fatal == "verifyKey refused: set [mirai] api_key"
    assert link.status.state is LinkState.STOPPED and not link.status.healthy
    assert sum("stopped: verifyKey refused" in line for line in log_lines) == 1


async def test_verdicts_reach_the_session_owner() -> None:
    clock = Clock()
    seen: list[Verdict] = []
    script = Script(ResumeLink("4009"), ReidentifyLink("4006"), "closed")
    await make_link(script, clock, [], on_verdict=seen.append).run()
    assert seen == [Verdict.RESUME, Verdict.REIDENTIFY, Verdict.RETRY]


async def test_status_follows_the_link() -> None:
    clock = Clock()
    states: list[LinkState] = []
    link: Link

    async def session(link: Link) -> str:
        states.append(link.status.state)
        if len(states) == 1:
            link.up()
            states.append(link.status.state)
            link.saw_event()
            raise OSError("dropped")
        link.stop()
        return "done"

    link = Link("l", session, logger, sleep=clock.sleep, clock=clock)
    await link.run()
    assert states == [LinkState.CONNECTING, LinkState.UP, LinkState.CONNECTING]
    assert link.status.last_event is not None
    assert link.status.as_dict()["state"] == "down"


class Probe(Adapter):
    """An adapter with one supervised link, for supervision tests."""

    protocol = "probe"

    async def start(self) -> None:
        pass

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        return None


async def test_a_link_task_that_ends_unexpectedly_is_restarted(log_lines: list[str]) -> None:
    adapter = Probe("probe", None, lambda event: asyncio.sleep(0))
    runs = 0
    restarted = asyncio.Event()
    clock = Clock()
    link = Link("probe link", Script(), logger, sleep=clock.sleep, clock=clock)

    async def broken_run() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise KeyError("a bug in the loop itself")
        if runs == 2:
            return  # ended without stop or a fatal verdict
        restarted.set()
        await asyncio.Event().wait()

    link.run = broken_run  # type: ignore[method-assign]
    adapter.supervise(link)
    await asyncio.wait_for(restarted.wait(), 5)
    assert runs == 3
    assert any("link task failed; restarting it" in line for line in log_lines)
    assert any("ended unexpectedly; restarting it" in line for line in log_lines)
    await adapter.stop()


async def test_every_link_stopped_fatally_is_reported_once() -> None:
    stopped: list[str] = []
    adapter = Probe("probe", None, lambda event: asyncio.sleep(0))
    adapter.on_stopped = lambda: stopped.append("all")
    clock = Clock()
    first = Link("a", Script(FatalLinkError("no")), logger, sleep=clock.sleep, clock=clock)
    second = Link("b", Script(OSError(), FatalLinkError("no")), logger, sleep=clock.sleep, clock=clock)
    tasks = [adapter.supervise(first), adapter.supervise(second)]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert stopped == ["all"]  # only once both had stopped
    assert adapter.status().stopped and not adapter.status().healthy
