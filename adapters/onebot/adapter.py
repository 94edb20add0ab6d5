"""The `[onebot]` section's adapter: the transport follows from which keys are set (DESIGN's rules)."""

from __future__ import annotations

from adapters.base import Adapter, EventSink
from adapters.onebot.settings import OneBotSettings
from adapters.onebot.transports import OneBotForward, OneBotHttp, OneBotReverse


def create(instance: str, settings: OneBotSettings, sink: EventSink) -> Adapter:
    """`ws_url` -> forward WS; `http_url` -> HTTP API (+ webhook or SSE); otherwise reverse WS."""
    mode = settings.mode
    if mode == "forward-ws":
        return OneBotForward(instance, settings, sink)
    if mode in ("http-post", "http-sse"):
        return OneBotHttp(instance, settings, sink)
    return OneBotReverse(instance, settings, sink)
