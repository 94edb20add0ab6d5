"""The history store seam: the HistoryStore protocol and the values it hands out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from core.tokens import estimate_tokens

SESSION_FIELDS = frozenset({"preset", "model", "account", "reply_mode", "voice"})
"""The per-session settings `update_session` may change."""

VOICE_OFF = "off"
"""`SessionState.voice` of a session whose user turned spoken replies off."""

WINDOW_PAGE = 64
"""Rows read per step while filling a window, newest first."""

RESET_ROLE = "reset"
"""Role of the hidden, empty row `reset` appends: every reset stays visible in the stored history."""

TOOL_ROLE = "tool"
"""Role of a stored tool call and its result: kept in history, the first thing a window leaves out."""


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """One visible message of a conversation, as sent to the model."""

    role: str
    content: str
    tokens: int


@dataclass(frozen=True, slots=True)
class StoredTool:
    """One tool call the model made while answering, and the result it was given."""

    call_id: str
    name: str
    arguments: str  # the JSON text the model wrote
    result: str

    def content(self) -> str:
        """The stored row's content: a compact JSON object {"id", "name", "arguments", "result"}."""
        record = {"id": self.call_id, "name": self.name, "arguments": self.arguments, "result": self.result}
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no database stores it raw, \u-escaped it round-trips
            text = json.dumps(record, separators=(",", ":"))
        return text

    @classmethod
    def from_turn(cls, turn: StoredTurn) -> StoredTool | None:
        """The tool call a window's tool row holds; None for any other row or malformed content."""
        if turn.role != TOOL_ROLE:
            return None
        try:
            record = json.loads(turn.content)
        except (ValueError, TypeError, RecursionError):
            return None
        if not isinstance(record, dict):
            return None
        fields = [value for name in ("id", "name", "arguments", "result") if isinstance(value := record.get(name), str)]
        return cls(*fields) if len(fields) == 4 else None


@dataclass(frozen=True)
class SessionState:
    """Per-session settings; the defaults describe a session never seen."""

    session_key: str
    preset: str = ""
    model: str = ""
    account: str = ""
    updated_at: float = 0.0
    reply_mode: str = ""  # "" follows `[response] mode`
    voice: str = ""  # "" follows the configured voice, VOICE_OFF = turned off by 切换语音 关闭, else a voice name


@runtime_checkable
class HistoryStore(Protocol):
    """Append-only conversation history: a SQL database or a dict, same behaviour."""

    async def close(self) -> None:
        """Release the store; calling it again does nothing."""
        ...

    async def window(self, session_key: str, budget_tokens: int) -> list[StoredTurn]:
        """The newest visible turns fitting `budget_tokens`, oldest first. Raises StorageError."""
        ...

    async def append_exchange(
        self,
        session_key: str,
        user_text: str,
        reply_text: str,
        *,
        now: float | None = None,
        tools: Sequence[StoredTool] = (),
    ) -> None:
        """Store one user turn, its tool calls (role TOOL_ROLE) and its reply together. Raises StorageError."""
        ...

    async def reset(self, session_key: str) -> None:
        """Start a new conversation; older turns stay stored but leave the window. Raises StorageError."""
        ...

    async def rollback(self, session_key: str) -> bool:
        """Hide the last visible exchange (user, its tool rows, assistant); False if there is none.
        Raises StorageError."""
        ...

    async def get_session(self, session_key: str) -> SessionState:
        """The session's settings (defaults when never seen). Raises StorageError."""
        ...

    async def update_session(self, session_key: str, /, **fields: str) -> None:
        """Set any of SESSION_FIELDS. Raises TypeError for other names, StorageError on failure."""
        ...


def reset_marker_row(session_key: str, at: float) -> dict[str, Any]:
    """The messages row recording one reset; hidden, so no window or rollback ever sees it."""
    return {
        "session_key": session_key,
        "role": RESET_ROLE,
        "content": "",
        "tokens": 0,
        "hidden": True,
        "created_at": at,
    }


def check_session_fields(fields: dict[str, str]) -> None:
    """Reject names other than SESSION_FIELDS and non-str values. Raises TypeError."""
    unknown = fields.keys() - SESSION_FIELDS
    if unknown:
        raise TypeError(f"update_session got unknown field(s): {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        if not isinstance(value, str):
            raise TypeError(f"update_session field {name} must be str, not {type(value).__name__}")


def exchange_rows(user_text: str, reply_text: str, tools: Sequence[StoredTool]) -> list[StoredTurn]:
    """The rows of one exchange in stored order: the user turn, one row per tool call, the reply."""
    turns = [StoredTurn("user", user_text, estimate_tokens(user_text))]
    for tool in tools:
        content = tool.content()
        turns.append(StoredTurn(TOOL_ROLE, content, estimate_tokens(content)))
    turns.append(StoredTurn("assistant", reply_text, estimate_tokens(reply_text)))
    return turns


def last_exchange_length(newest_first_roles: Iterable[str]) -> int | None:
    """How many of the newest visible rows form the last exchange (assistant, its tool rows, user);
    0 when the tail is not an exchange, None when the rows ran out inside its tool rows."""
    for count, role in enumerate(newest_first_roles, 1):
        if count == 1:
            if role != "assistant":
                return 0
        elif role == "user":
            return count
        elif role != TOOL_ROLE:
            return 0
    return None


class WindowRow(Protocol):
    """What choosing a window needs of a row: a StoredTurn, or the SQL store's tool row read without its text."""

    @property
    def role(self) -> str: ...

    @property
    def tokens(self) -> int: ...


_Row = TypeVar("_Row", bound=WindowRow)


def fill_window(newest_first: Iterable[_Row], budget_left: int, taken: list[_Row]) -> int | None:
    """Append rows to `taken` (newest first) while the turns fit; the budget left, or None once one did not.

    Tool rows are taken without being charged: `finish_window` decides which of them fit in what the
    turns leave over. Shared by both stores so their windows cannot drift apart; SQL calls it once per page.
    """
    for row in newest_first:
        if row.role != TOOL_ROLE:
            budget_left -= row.tokens
            if budget_left < 0:
                return None
        taken.append(row)
    return budget_left


def finish_window(newest_first: list[_Row], budget_tokens: int) -> list[_Row]:
    """Oldest-first window that never opens with an assistant turn (that half-exchange confuses models)
    or a tool row, holding the newest tool rows that fit in the budget its turns leave over."""
    newest_first.reverse()
    start = 0
    while start < len(newest_first) and newest_first[start].role in ("assistant", TOOL_ROLE):
        start += 1
    span = newest_first[start:] if start else newest_first
    return _with_tools_that_fit(span, budget_tokens)


def _with_tools_that_fit(span: list[_Row], budget_tokens: int) -> list[_Row]:
    """`span` (oldest first) keeping its turns and, newest first, the tool rows that fit what they leave."""
    if not any(row.role == TOOL_ROLE for row in span):
        return span
    left = budget_tokens - sum(row.tokens for row in span if row.role != TOOL_ROLE)
    oldest_kept = len(span)  # tool rows before this index are left out
    for index in range(len(span) - 1, -1, -1):
        row = span[index]
        if row.role == TOOL_ROLE:
            left -= row.tokens
            if left < 0:
                break
            oldest_kept = index
    else:
        return span
    return [row for index, row in enumerate(span) if row.role != TOOL_ROLE or index >= oldest_kept]
