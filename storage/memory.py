"""In-memory history store with the same behaviour as the SQL one, for tests and as a seam."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from core.errors import StorageError
from storage.base import (
    RESET_ROLE,
    TOOL_ROLE,
    SessionState,
    StoredTool,
    StoredTurn,
    check_session_fields,
    exchange_rows,
    fill_window,
    finish_window,
    last_exchange_length,
)


@dataclass(slots=True)
class _Row:
    id: int
    turn: StoredTurn
    hidden: bool = False


class MemoryHistoryStore:
    """HistoryStore in plain dicts and lists; lost when the process ends."""

    def __init__(self) -> None:
        self._rows: dict[str, list[_Row]] = {}
        self._cleared_before: dict[str, int] = {}
        self._sessions: dict[str, SessionState] = {}
        self._last_id = 0  # ids are global and increasing, like the SQL table's
        self._closed = False

    @classmethod
    async def open(cls, url: str = "memory://") -> MemoryHistoryStore:
        """A new empty store; `url` is ignored and only mirrors SqlHistoryStore.open."""
        return cls()

    async def close(self) -> None:
        """Mark the store closed; calling it again does nothing."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("history store: memory store is closed")

    def _visible_newest_first(self, session_key: str) -> Iterator[_Row]:
        cleared = self._cleared_before.get(session_key, 0)
        for row in reversed(self._rows.get(session_key, ())):
            if row.id <= cleared:
                return
            if not row.hidden:
                yield row

    async def window(self, session_key: str, budget_tokens: int) -> list[StoredTurn]:
        """The newest visible turns fitting `budget_tokens`, oldest first."""
        self._check_open()
        taken: list[StoredTurn] = []
        if budget_tokens > 0:
            fill_window((row.turn for row in self._visible_newest_first(session_key)), budget_tokens, taken)
        return finish_window(taken, budget_tokens)

    async def append_exchange(
        self,
        session_key: str,
        user_text: str,
        reply_text: str,
        *,
        now: float | None = None,
        tools: Sequence[StoredTool] = (),
    ) -> None:
        """Store the user turn, its tool calls, then the reply."""
        self._check_open()
        at = time.time() if now is None else now
        turns = exchange_rows(user_text, reply_text, tools)
        rows = self._rows.setdefault(session_key, [])
        for turn in turns:
            self._last_id += 1
            rows.append(_Row(self._last_id, turn))
        self._touch(session_key, at)

    async def reset(self, session_key: str) -> None:
        """Start a new conversation without deleting anything; a hidden RESET_ROLE row records it."""
        self._check_open()
        self._last_id += 1
        self._rows.setdefault(session_key, []).append(_Row(self._last_id, StoredTurn(RESET_ROLE, "", 0), hidden=True))
        self._cleared_before[session_key] = self._last_id  # the marker's id, as in the SQL store
        self._touch(session_key, time.time())

    async def rollback(self, session_key: str) -> bool:
        """Hide the last visible exchange (user, its tool rows, assistant); False if there is none."""
        self._check_open()
        rows: list[_Row] = []
        for row in self._visible_newest_first(session_key):  # the reply, its tool rows, the next turn
            rows.append(row)
            if len(rows) > 1 and row.turn.role != TOOL_ROLE:
                break
        count = last_exchange_length(row.turn.role for row in rows)
        if not count:
            return False
        for row in rows[:count]:
            row.hidden = True
        return True

    async def get_session(self, session_key: str) -> SessionState:
        """The session's settings, defaults when never seen."""
        self._check_open()
        return self._sessions.get(session_key) or SessionState(session_key)

    async def update_session(self, session_key: str, /, **fields: str) -> None:
        """Set any of SESSION_FIELDS. Raises TypeError for other names."""
        check_session_fields(fields)
        self._check_open()
        state = self._sessions.get(session_key) or SessionState(session_key)
        self._sessions[session_key] = replace(state, **fields, updated_at=time.time())

    def _touch(self, session_key: str, at: float) -> None:
        state = self._sessions.get(session_key) or SessionState(session_key)
        self._sessions[session_key] = replace(state, updated_at=at)
