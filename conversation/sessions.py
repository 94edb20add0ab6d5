"""Per-session settings (preset, model, account) cached in memory in front of the history store."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from storage.base import HistoryStore, SessionState


class SessionSettings:
    """Reads each session's stored settings once, then serves them from a bounded cache."""

    def __init__(self, store: HistoryStore, size: int = 4096) -> None:
        self._store = store
        self._size = size
        self._cache: OrderedDict[str, SessionState] = OrderedDict()

    async def get(self, session_key: str) -> SessionState:
        """The session's settings (defaults for a new session). Raises StorageError."""
        state = self._cache.get(session_key)
        if state is None:
            state = await self._store.get_session(session_key)
            self._remember(session_key, state)
        else:
            self._cache.move_to_end(session_key)
        return state

    async def update(self, session_key: str, **fields: str) -> SessionState:
        """Store new settings for the session (kept across restarts). Raises StorageError."""
        await self._store.update_session(session_key, **fields)
        state = dataclasses.replace(await self.get(session_key), **fields)  # type: ignore[arg-type]
        self._remember(session_key, state)
        return state

    def touched(self, session_key: str, at: float) -> None:
        """Note activity the store already recorded (an appended exchange) in the cached settings."""
        state = self._cache.get(session_key)
        if state is not None:
            self._cache[session_key] = dataclasses.replace(state, updated_at=at)

    def _remember(self, session_key: str, state: SessionState) -> None:
        self._cache[session_key] = state
        self._cache.move_to_end(session_key)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
