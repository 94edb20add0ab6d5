"""asyncio's own error reports, throttled: a failing accept() (EMFILE) is said once a minute, not per try."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger

REPEAT_SECONDS = 60.0


def quiet_repeated_loop_errors(loop: asyncio.AbstractEventLoop, every: float = REPEAT_SECONDS) -> None:
    """Log the loop's unhandled errors through loguru, each kind at most once per `every` seconds.

    When the process runs out of file descriptors, asyncio retries accept() every second per
    listener and reports each failure: without this, one bad hour writes a hundred thousand lines.
    """
    last: dict[str, float] = {}
    skipped: dict[str, int] = {}

    def report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the event loop")
        exc = context.get("exception")
        kind = f"{message}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        now = time.monotonic()
        if now - last.get(kind, -every) < every:
            skipped[kind] = skipped.get(kind, 0) + 1
            return
        last[kind] = now
        repeats = skipped.pop(kind, 0)
        suffix = f" (and {repeats} more like it in the last {every:.0f}s)" if repeats else ""
        logger.opt(exception=exc if isinstance(exc, BaseException) else None).error("{}{}", message, suffix)

    loop.set_exception_handler(report)
