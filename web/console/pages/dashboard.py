"""仪表盘 Dashboard: every platform link, every model account, the queues; refreshed every few seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
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
    return {
        "platforms": bot.statuses(),
        "accounts": bot.model.states(),
        "queues": bot.manager.queues(),
        "now": console.clock(),
    }
