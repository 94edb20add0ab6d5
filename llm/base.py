"""The chat model interface every LLM backend implements, and its error when all accounts fail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from core.config import OpenAISettings
from core.errors import LLMError

# "tool": the result of one tool call, answering an assistant turn's `tool_calls`
Role = Literal["system", "user", "assistant", "tool"]
# "empty": HTTP 200 without any answer text; "context_length" also covers a 200 with an empty stream,
# which is how llama.cpp and some proxies report a prompt over the context window.
FailureKind = Literal[
    "auth", "rate_limit", "timeout", "network", "server", "bad_request", "context_length", "unsupported", "empty"
]
# Receives the reply text piece by piece while it streams. Reasoning (`reasoning_content`) arrives
# wrapped in <think>...</think>, the same form DeepSeek-R1 style models put in their content.
DeltaSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for (OpenAI `tool_calls` entry).

    `arguments` is the raw JSON text the model wrote, kept as it came: it may be invalid JSON, which
    the caller (the tool loop) reports back to the model instead of failing here.
    """

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of the conversation sent to the model.

    An assistant turn that asked for tools carries `tool_calls` (its `content` may be ""); a "tool"
    turn is one tool's result: `tool_call_id` names the call it answers, `name` the tool.
    """

    role: Role
    content: str
    images: tuple[str, ...] = ()  # data: URLs, sent as image parts to accounts with vision
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class LLMReply:
    """The model's answer and which account and model produced it."""

    text: str
    account: str
    model: str
    prompt_tokens: int | None = None  # the server's `usage.prompt_tokens`, when it reported one
    tool_calls: tuple[ToolCall, ...] = ()  # functions the model asked for, in its order; text may be ""


class ReplyStopped(Exception):
    """Raised by a DeltaSink to end the answer early (e.g. at a length cap): the call stops, no retry."""


class AllAccountsFailed(LLMError):
    """No account could answer; `kind` describes the last failure, `detail` is short and secret-free.

    The message is safe to show in chat: it never holds a key, a prompt or a provider's error text.
    """

    def __init__(
        self, kind: FailureKind, detail: str = "", status: int | None = None, *, partial: bool = False
    ) -> None:
        super().__init__(kind, detail, status, partial=partial)
        self.kind: FailureKind = kind


@dataclass(frozen=True, slots=True)
class DrawnImage:
    """A generated picture: a URL to fetch it from, or its bytes as base64."""

    url: str = ""
    base64: str = ""
    account: str = ""


@runtime_checkable
class ChatModel(Protocol):
    """A chat completion backend."""

    async def complete(
        self,
        turns: Sequence[ChatTurn],
        *,
        model: str | None = None,
        account: str | None = None,
        on_delta: DeltaSink | None = None,
        max_reply_tokens: int | None = None,
        tools: Sequence[dict[str, Any]] = (),
    ) -> LLMReply:
        """Answer the conversation `turns`.

        `model` overrides the account's model; `account` (a name) is tried first; `on_delta`
        receives the text as it streams; `max_reply_tokens` is the caller's completion limit (the
        context left after the prompt), lowered further by configured caps. `tools` are OpenAI
        `tools` entries (`{"type": "function", "function": {...}}`), offered only to accounts that
        can call functions; the reply's `tool_calls` lists the calls the model asked for (then its
        text may be empty, which is not a failure). Raises AllAccountsFailed
        (an LLMError) when every account failed, with `partial` set when `on_delta` had already been
        given text; ReplyStopped raised by `on_delta` ends the call and propagates.
        """
        ...

    async def draw(self, prompt: str) -> DrawnImage:
        """Generate one picture; raises AllAccountsFailed (kind "unsupported" when no account draws)."""
        ...

    @property
    def vision_available(self) -> bool:
        """Some usable account accepts images."""
        ...

    def accounts(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(name, default model, other models) of every usable account."""
        ...

    def default_model(self, account: str | None) -> str:
        """The default model of `account` ("" when unknown)."""
        ...

    def account_for_model(self, model: str) -> str:
        """A usable account that names `model`, or ""."""
        ...

    def reload(self, settings: OpenAISettings) -> None:
        """Use new account settings (re-enables keys that were rejected)."""
        ...

    async def close(self) -> None:
        """Release connections; the backend may be used again afterwards."""
        ...
