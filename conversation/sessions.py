"""Per-session settings (preset, model, account, reply mode) cached in memory in front of the history store."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from storage.base import HistoryStore, SessionState


class SessionSettings:
    """Reads each session's stored settings once, then serves them from a bounded cache.

    With `ttl` (several bot processes on one database) an entry older than `ttl` seconds is read
    again, so a preset or model chosen through another process applies here within that time.
    """

    def __init__(
        self,
        store: HistoryStore,
        size: int = 4096,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._cache: OrderedDict[str, tuple[SessionState, float]] = OrderedDict()

    async def get(self, session_key: str) -> SessionState:
        """The session's settings (defaults for a new session). Raises StorageError."""
        cached = self._cache.get(session_key)
        if cached is not None and (self._ttl is None or self._clock() - cached[1] < self._ttl):
            self._cache.move_to_end(session_key)
            return cached[0]
        state = await self._store.get_session(session_key)
        self._remember(session_key, state)
        return state

    async def update(self, session_key: str, **fields: str) -> SessionState:
        """Store new settings for the session (kept across restarts). Raises StorageError."""
        await self._store.update_session(session_key, **fields)
        state = dataclasses.replace(await self.get(session_key), **fields)  # type: ignore[arg-type]
        self._remember(session_key, state)
        return state

    def touched(self, session_key: str, at: float) -> None:
        """Note activity the store already recorded (an appended exchange) in the cached settings."""
        cached = self._cache.get(session_key)
        if cached is not None:
            self._cache[session_key] = (dataclasses.replace(cached[0], updated_at=at), cached[1])

    def _remember(self, session_key: str, state: SessionState) -> None:
        self._cache[session_key] = (state, self._clock())
        self._cache.move_to_end(session_key)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
