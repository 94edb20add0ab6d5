"""The `[web]` HTTP server: `GET /healthz` reports every platform link (the web console extends it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from loguru import logger

from adapters.base import AdapterStatus
from adapters.listen import LOOPBACK, listen
from core.config import WebSettings
from core.errors import AdapterError


class WebServer:
    """Serves health as JSON: 200 when every link is up or listening, 503 otherwise."""

    def __init__(self, settings: WebSettings, statuses: Callable[[], Sequence[AdapterStatus]]) -> None:
        self.settings = settings
        self.statuses = statuses
        self.log = logger.bind(adapter="web")
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on `[web] host`/`port`; raises AdapterError when the port is taken."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        try:
            self._runner, self.port = await listen(app, self.settings.host, self.settings.port)
        except AdapterError as exc:
            raise AdapterError(f"[web] {exc}; change [web] port, or set [web] enable = false") from None
        self.log.info("health at http://{}:{}/healthz", self.settings.host, self.port)
        if self.settings.host not in LOOPBACK:
            self.log.warning(
                "SECURITY: the [web] server listens on {}: anyone who can reach it sees the links' states. "
                'Keep host = "127.0.0.1" unless a firewall guards the port.',
                self.settings.host,
            )

    async def stop(self) -> None:
        """Close the listener."""
        if self._runner is not None:
            await self._runner.cleanup()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every platform is healthy, and the report."""
        statuses = list(self.statuses())
        healthy = bool(statuses) and all(status.healthy for status in statuses)
        return healthy, {"status": "ok" if healthy else "unhealthy", "platforms": [s.as_dict() for s in statuses]}

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, report = self.health()
        return web.json_response(report, status=200 if healthy else 503)
