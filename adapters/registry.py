"""The one table of protocols: config section name, its settings model, and what builds its adapter."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.http.settings import HttpSettings
from adapters.milky.settings import MilkySettings
from adapters.mirai.settings import MiraiSettings
from adapters.onebot.settings import OneBotSettings
from adapters.qqbot.settings import QQBotSettings
from adapters.satori.settings import SatoriSettings
from core.config import Section, register_platform

if TYPE_CHECKING:
    from adapters.base import AdapterFactory


@dataclass(frozen=True, slots=True)
class Platform:
    """A protocol the bot speaks: `[name]` in the config starts `factory` with a `settings` section.

    The factory is "module:attribute" and imported only when that section is configured, so an
    unused protocol costs no start-up time.
    """

    name: str
    settings: type[Section] | None
    factory: str


PLATFORMS = (
    Platform("mirai", MiraiSettings, "adapters.mirai.adapter:create"),
    Platform("onebot", OneBotSettings, "adapters.onebot.adapter:create"),
    Platform("milky", MilkySettings, "adapters.milky.adapter:MilkyAdapter"),
    Platform("satori", SatoriSettings, "adapters.satori.adapter:SatoriAdapter"),
    Platform("qqbot", QQBotSettings, "adapters.qqbot.adapter:QQBotAdapter"),
    Platform("http", HttpSettings, "adapters.http.adapter:HttpApiAdapter"),
    Platform("console", None, "adapters.console.adapter:ConsoleAdapter"),  # `--console`, not a section
)
_BY_NAME = {platform.name: platform for platform in PLATFORMS}

for _platform in PLATFORMS:
    if _platform.settings is not None:
        register_platform(_platform.name, _platform.settings)


def adapter_factory(name: str) -> AdapterFactory:
    """What builds the adapter registered under `name`; raises KeyError for an unknown name."""
    module_name, _, attribute = _BY_NAME[name].factory.partition(":")
    factory: Any = getattr(importlib.import_module(module_name), attribute)
    return factory  # type: ignore[no-any-return]
