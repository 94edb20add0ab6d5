"""The one reconnect loop client-side links share: backoff, "down" logging, healthy-link reset."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from core.backoff import Backoff

HEALTHY_SECONDS = 30.0  # a link that stayed up this long was healthy: the next outage starts from 1 s

# One connection attempt: returns (whether the link was up, why it ended); may raise network errors.
Session = Callable[[], Awaitable[tuple[bool, str]]]


async def keep_connected(what: str, session: Session, stopping: Callable[[], bool], log: Any) -> None:
    """Run `session()` until `stopping()`, waiting a capped, jittered backoff (1 s doubling to 30 s)
    between attempts. The log says once when the link goes down (the session says when it is up)."""
    backoff = Backoff(min_delay=1.0, max_delay=30.0)
    loop = asyncio.get_running_loop()
    down_logged = False
    while not stopping():
        started = loop.time()
        try:
            was_up, reason = await session()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            was_up, reason = False, type(exc).__name__
        if stopping():
            return
        if was_up:
            down_logged = False
            if loop.time() - started > HEALTHY_SECONDS:
                backoff.reset()
        delay = backoff.next_delay()
        if not down_logged:
            log.warning("{} down ({}); retrying in {:.1f}s", what, reason, delay)
            down_logged = True
        else:
            log.debug("{} still down ({}); next try in {:.1f}s", what, reason, delay)
        await asyncio.sleep(delay)
