"""The one interface every tool implements, and what the conversation layer sees of a tool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it: its name, what it does, its JSON-schema parameters; and the
    short Chinese notice users get when it runs long (e.g. "正在搜索…")."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}}, hash=False)
    progress: str = ""

    def openai(self) -> dict[str, Any]:
        """The entry of the request's `tools` list."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolError(Exception):
    """A tool call that failed; the message is short, safe to log and to show the model (no secret)."""


class Tool(Protocol):
    """Something the model can call."""

    @property
    def spec(self) -> ToolSpec: ...

    async def call(self, arguments: dict[str, Any]) -> str:
        """The result as text for the model. Raises ToolError (anything else is a bug, caught by the caller)."""
        ...
