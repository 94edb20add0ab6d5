"""The history store seam: the HistoryStore protocol and the values it hands out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

SESSION_FIELDS = frozenset({"preset", "model", "account", "reply_mode", "voice"})
"""The per-session settings `update_session` may change."""

VOICE_OFF = "off"
"""`SessionState.voice` of a session whose user turned spoken replies off."""

WINDOW_PAGE = 64
"""Rows read per step while filling a window, newest first."""

RESET_ROLE = "reset"
"""Role of the hidden, empty row `reset` appends: every reset stays visible in the stored history."""


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """One visible message of a conversation, as sent to the model."""

    role: str
    content: str
    tokens: int


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
        self, session_key: str, user_text: str, reply_text: str, *, now: float | None = None
    ) -> None:
        """Store one user turn and its reply together. Raises StorageError."""
        ...

    async def reset(self, session_key: str) -> None:
        """Start a new conversation; older turns stay stored but leave the window. Raises StorageError."""
        ...

    async def rollback(self, session_key: str) -> bool:
        """Hide the last visible user+assistant pair; False if there is none. Raises StorageError."""
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


def fill_window(newest_first: Iterable[StoredTurn], budget_left: int, taken: list[StoredTurn]) -> int | None:
    """Append turns to `taken` (newest first) while they fit; the budget left, or None once one did not.

    Shared by both stores so their windows cannot drift apart; SQL calls it once per page.
    """
    for turn in newest_first:
        budget_left -= turn.tokens
        if budget_left < 0:
            return None
        taken.append(turn)
    return budget_left


def finish_window(newest_first: list[StoredTurn]) -> list[StoredTurn]:
    """Oldest-first window that never opens with an assistant turn (that half-exchange confuses models)."""
    newest_first.reverse()
    start = 0
    while start < len(newest_first) and newest_first[start].role == "assistant":
        start += 1
    return newest_first[start:] if start else newest_first
