"""The built-in tools `[tools]` switches on: current_time, web_fetch and web_search.

`[tools] enable` is the caller's to check; this only honours each tool's own switch. A search provider
that is selected but cannot work (no key, no SearXNG URL) is left out with one warning, so the model
is never offered a tool that can only fail.
"""

from __future__ import annotations

from loguru import logger

from core.config import ToolSettings
from tools.base import Tool, ToolError
from tools.clock import CurrentTime
from tools.fetch import WebFetch
from tools.search import WebSearch

log = logger.bind(adapter="tools")


def builtin_tools(settings: ToolSettings) -> list[Tool]:
    tools: list[Tool] = []
    if settings.time:
        tools.append(CurrentTime(settings.timezone))
    if settings.fetch:
        tools.append(
            WebFetch(max_bytes=settings.fetch_max_bytes, max_chars=settings.fetch_max_chars, timeout=settings.timeout)
        )
    if settings.search:
        search = _web_search(settings)
        if search is not None:
            tools.append(search)
    return tools


def _web_search(settings: ToolSettings) -> WebSearch | None:
    try:
        return WebSearch(
            settings.search,
            api_key=settings.search_api_key.get_secret_value(),
            search_url=settings.search_url,
            max_results=settings.search_results,
            timeout=settings.timeout,
        )
    except ToolError as exc:
        log.warning("web_search ({}) is off: {}", settings.search, exc)
        return None
