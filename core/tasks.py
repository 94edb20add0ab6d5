"""Task ownership: long-lived objects keep their tasks here, log failures and cancel on stop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from loguru import logger


class TaskSet:
    """A set of background tasks owned by one object.

    Failures are logged from a done-callback (never lost silently); `close()` cancels what is
    still running and waits at most `timeout` seconds for it to finish.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start `coro` as a task owned by this set."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.opt(exception=exc).error("{} task {} failed", self._owner, task.get_name())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout: float = 3.0) -> None:
        """Cancel every task and wait for them, at most `timeout` seconds."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                logger.warning("{}: {} task(s) did not stop in {}s", self._owner, len(pending), timeout)
