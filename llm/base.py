"""The chat model interface every LLM backend implements, and its error when all accounts fail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from core.errors import LLMError

Role = Literal["system", "user", "assistant"]
FailureKind = Literal["auth", "rate_limit", "timeout", "network", "server", "bad_request"]


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of the conversation sent to the model."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class LLMReply:
    """The model's answer and which account and model produced it."""

    text: str
    account: str
    model: str


class AllAccountsFailed(LLMError):
    """No account could answer; `kind` describes the last failure, `detail` is short and secret-free.

    The message is safe to show in chat: it never holds a key, a prompt or a provider's error text.
    """

    def __init__(self, kind: FailureKind, detail: str = "", status: int | None = None) -> None:
        self.kind: FailureKind = kind
        self.detail = detail
        self.status = status
        super().__init__(f"LLM request failed ({kind}{': ' + detail if detail else ''})")


@runtime_checkable
class ChatModel(Protocol):
    """A chat completion backend."""

    async def complete(
        self, turns: Sequence[ChatTurn], *, model: str | None = None, account: str | None = None
    ) -> LLMReply:
        """Answer the conversation `turns`.

        `model` overrides the account's model; `account` (a name) is tried first.
        Raises AllAccountsFailed (an LLMError) when every account failed.
        """
        ...

    async def close(self) -> None:
        """Release connections; the backend may be used again afterwards."""
        ...
