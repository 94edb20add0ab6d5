"""The `[web]` HTTP server: `GET /healthz` reports every platform link; the web console lives beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from loguru import logger

from adapters.base import AdapterStatus
from adapters.listen import LOOPBACK, bearer_token, listen, listener_app, secret_matches
from core.config import WebSettings
from core.errors import AdapterError
from web.console.bot import ConsoleBot


class WebServer:
    """Serves health as JSON (200 when every link is up or listening, 503 otherwise) and, given the
    bot, the web console."""

    def __init__(
        self,
        settings: WebSettings,
        statuses: Callable[[], Sequence[AdapterStatus]],
        bot: ConsoleBot | None = None,
    ) -> None:
        self.settings = settings
        self.statuses = statuses
        self.bot = bot
        self.log = logger.bind(adapter="web")
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on `[web] host`/`port`; raises AdapterError when the port is taken."""
        app = listener_app()
        app.router.add_get("/healthz", self._healthz)
        if self.bot is not None and self.settings.metrics:
            app.router.add_get("/metrics", self._metrics)
        if self.bot is not None and self.settings.console:
            from web.console.app import Console  # Jinja2 loads only when the console is on

            self.console = Console(self.settings, self.bot)
            self.console.setup(app)
        try:
            self._runner, self.port = await listen(app, self.settings.host, self.settings.port)
        except AdapterError as exc:
            raise AdapterError(f"[web] {exc}; change [web] port, or set [web] enable = false") from None
        self.log.info("health at http://{}:{}/healthz", self.settings.host, self.port)
        if self.bot is not None and self.settings.console:
            if self.settings.password.get_secret_value():
                self.log.info("web console at http://{}:{}/", self.settings.host, self.port)
            else:
                self.log.warning(
                    "the web console at http://{}:{}/ is locked: set [web] password in the config to use it",
                    self.settings.host,
                    self.port,
                )
        if self.settings.host not in LOOPBACK:
            self.log.warning(
                "SECURITY: the [web] server listens on {}: anyone who can reach it sees the links' states{}. "
                'Keep host = "127.0.0.1" unless a firewall guards the port.',
                self.settings.host,
                " and can try the console password" if self.settings.console else "",
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

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus' text format; with `[web] metrics_token`, only for `Authorization: Bearer <token>`."""
        token = self.settings.metrics_token.get_secret_value()
        if token and not secret_matches(bearer_token(request), token):
            return web.Response(
                status=401, text="wrong or missing metrics token", headers={"WWW-Authenticate": "Bearer"}
            )
        assert self.bot is not None  # the route exists only with a bot
        from prometheus_client import CONTENT_TYPE_LATEST  # loaded when first scraped, not at start

        body = await asyncio.to_thread(self.bot.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy, report = self.health()
        return web.json_response(report, status=200 if healthy else 503)
