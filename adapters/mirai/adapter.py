"""The `[mirai]` section's adapter: reverse WebSocket when `reverse_ws_port` is set, else forward."""

from __future__ import annotations

from adapters.base import Adapter, EventSink
from adapters.mirai.forward import MiraiForward
from adapters.mirai.reverse import MiraiReverse
from adapters.mirai.settings import MiraiSettings


def create(instance: str, settings: MiraiSettings, sink: EventSink) -> Adapter:
    """mirai-api-http dials the bot (reverse-ws) or the bot dials it (ws + http), per the config."""
    if settings.reverse_ws_port is not None:
        return MiraiReverse(instance, settings, sink)
    return MiraiForward(instance, settings, sink)
