"""仪表盘 Dashboard: platform links, model accounts, queues, answers per hour and recent failures; refreshed live."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from conversation.tools import ToolBox
    from web.console.app import Console

ORDER = 10
REFRESH_SECONDS = 3


def setup(console: Console) -> None:
    async def page(request: web.Request) -> web.Response:
        return console.render(request, "dashboard.html", refresh=REFRESH_SECONDS, **_facts(console))

    async def live(request: web.Request) -> web.Response:
        return console.render(request, "dashboard_live.html", **_facts(console))

    console.page("/", "仪表盘", page)
    console.get("/dashboard/live", live)


def _facts(console: Console) -> dict[str, Any]:
    bot = console.bot
    metrics = bot.metrics
    hours = metrics.answers_per_hour()
    return {
        "platforms": bot.statuses(),
        "accounts": [(state, metrics.account_calls(state.name)) for state in bot.model.states()],
        "queues": bot.manager.queues(),
        "failures": metrics.failures_last_hour(),
        "answered_today": sum(ok + failed for _, ok, failed in hours),
        # for the chart (web/static/dashboard.js): [hour starts], [ok answers], [failed answers]
        "chart": json.dumps([[h for h, _, _ in hours], [ok for _, ok, _ in hours], [f for _, _, f in hours]]),
        "voice": _voice_rows(bot.manager.voice.health()),
        "tools": _tool_facts(bot.manager.toolbox),
    }


def _tool_facts(toolbox: ToolBox) -> dict[str, Any] | None:
    """How many tools the model has now, and each MCP server's state; None while tools are off."""
    if not toolbox.enabled:
        return None
    return {"count": len(toolbox.all()), "servers": toolbox.mcp.status() if toolbox.mcp is not None else []}


VOICE_TITLES = {"stt": "语音识别 STT", "tts": "语音合成 TTS"}


def _voice_rows(health: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Speech to text and text to speech, as table rows; none while both are off."""
    if not any(part["enabled"] for part in health.values()):
        return []
    return [
        {
            **part,
            "kind": kind,
            "title": VOICE_TITLES[kind],
            "healthy": part["last_failed_at"] <= part["last_ok_at"],
            "latency_ms": part["last_latency_ms"] if part["ok"] or part["failed"] else None,
        }
        for kind, part in health.items()
    ]
