"""What the console sees of the running bot (bot.App provides it; tests may hand a smaller one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from adapters.base import Adapter, AdapterStatus
    from conversation.manager import ConversationManager
    from conversation.presets import PresetBook
    from core.config import Settings
    from core.metrics import Metrics
    from llm.openai_compat import OpenAICompatible
    from storage.admin import AdminStore
    from storage.store import SqlHistoryStore


class ConsoleBot(Protocol):
    """The running bot's parts; `ready` is False until they all exist (the web server starts first)."""

    ready: bool
    settings: Settings  # the current settings (replaced on every reload)
    adapters: dict[str, Adapter]
    store: SqlHistoryStore
    admin: AdminStore
    model: OpenAICompatible
    presets: PresetBook
    manager: ConversationManager
    metrics: Metrics

    def statuses(self) -> list[AdapterStatus]:
        """Every platform's links, as data."""
        ...

    async def reload(self) -> str:
        """Read config.toml again and use it everywhere; the outcome as one line for the user."""
        ...
