"""The request/answer store for protocols that match answers to requests by a key (echo, syncId)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import ActionFailedError, NotConnectedError


class EchoStore:
    """Pending requests: key -> Future, answered by `resolve`, failed together by `fail_all`.

    `request` registers the key, sends, waits with a timeout and always removes the key again,
    so an answer that comes too late (or twice) finds nothing and is ignored.
    """

    def __init__(self, peer: str, timeout: float, first: int = 1) -> None:
        self.peer = peer  # for error texts: "mirai-api-http", "the OneBot implementation"
        self.timeout = timeout
        self._keys = itertools.count(first)
        self._pending: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def next_key(self) -> str:
        """A key no pending request uses."""
        return str(next(self._keys))

    async def request(self, key: str, action: str, send: Callable[[], Awaitable[object]]) -> Any:
        """Register `key`, run `send()`, and return the answer given to `resolve(key, ...)`.

        Raises NotConnectedError when sending fails or the link is lost meanwhile, and
        ActionFailedError(action, "timeout") when no answer comes in time.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            try:
                await send()
            except (ConnectionError, RuntimeError) as exc:  # aiohttp raises these on a closing socket
                raise NotConnectedError(f"{self.peer}: {exc}") from None
            try:
                async with asyncio.timeout(self.timeout):
                    return await future
            except TimeoutError:
                raise ActionFailedError(action, "timeout", f"no answer in {self.timeout:g}s") from None
        finally:
            self._pending.pop(key, None)

    def resolve(self, key: object, answer: Any) -> bool:
        """Hand `answer` to the request waiting for `key`; whether one was waiting."""
        if key is None or isinstance(key, dict | list):
            return False
        future = self._pending.get(str(key))
        if future is None:
            return False
        if not future.done():
            future.set_result(answer)
        return True

    def fail_all(self, reason: str = "disconnected") -> None:
        """The link is gone: every waiting request raises NotConnectedError now instead of timing out."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnectedError(f"{self.peer} {reason}"))
        self._pending.clear()
