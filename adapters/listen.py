"""Every listener the bot opens (reverse WebSocket, webhooks, the web server): caps, guards, one clear error."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from loguru import logger

from adapters.frames import MAX_BODY, preview
from core.config import LOOPBACK
from core.errors import AdapterError

__all__ = ["LOOPBACK", "bearer_token", "header", "listen", "listener_app", "secret_matches"]
MAX_CONNECTIONS = 256  # a QQ protocol program needs a few; more is a client gone wrong or an attack
HEADER_TIMEOUT = 10.0  # a client that has not sent its request headers by then is cut off
HEARTBEAT = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def header(request: web.Request, name: str) -> bytes:
    """A request header as bytes: header values may carry any byte, and comparing them must not raise."""
    return request.headers.get(name, "").encode("utf-8", errors="surrogateescape")


def secret_matches(given: bytes | str, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the configured one."""
    if isinstance(given, str):
        given = given.encode("utf-8", errors="surrogateescape")
    return hmac.compare_digest(given, expected.encode())


def bearer_token(request: web.Request, query_name: str = "") -> bytes:
    """`Authorization: Bearer|Token <t>` (any case), else `?<query_name>=<t>`, as bytes."""
    scheme, _, value = header(request, "Authorization").partition(b" ")
    if scheme.lower() in (b"bearer", b"token") and value.strip():
        return value.strip()
    if query_name:
        return request.query.get(query_name, "").encode("utf-8", errors="surrogateescape")
    return b""


@web.middleware
async def _boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The error boundary around every request: bad input is a 4xx, a bug is logged, never a 5xx."""
    length = request.content_length
    if length is not None and length > request.app[MAX_BODY_KEY]:
        logger.warning("refused a {}-byte request to {} from {}: too large", length, request.path, request.remote)
        return web.Response(status=413)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 500:
            raise
        logger.warning("answered 400 instead of {} to {}", exc.status, request.path)
        return web.Response(status=400)
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug or hostile input that got past the handler's checks
        logger.opt(exception=True).error(
            "dropped a request to {} from {} that could not be handled: {}",
            preview(request.path_qs.encode("utf-8", "surrogateescape")),
            request.remote,
            request.method,
        )
        return web.Response(status=400)


MAX_BODY_KEY = web.AppKey("max_body", int)


def listener_app(max_body: int = MAX_BODY) -> web.Application:
    """An aiohttp app with the error boundary and the body cap (bodies are never read past it)."""
    app = web.Application(client_max_size=max_body, middlewares=[_boundary])
    app[MAX_BODY_KEY] = max_body
    return app


class _GuardedSite(web.TCPSite):
    """A TCP site that refuses connections over a cap and cuts off clients that stall their headers."""

    def __init__(self, runner: web.AppRunner, host: str, port: int | None, max_connections: int, header_timeout: float):
        super().__init__(runner, host, port)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.refused = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def connection() -> asyncio.BaseProtocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    logger.warning("refused connection(s) on port {}: over {} open", self.port, self.max_connections)
                return _Refuse()
            handler = server()
            loop.call_later(self.header_timeout, _cut_off_if_silent, handler)
            return handler

        self._server = await loop.create_server(connection, self._host, self._port, backlog=self._backlog)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


class _Refuse(asyncio.Protocol):
    """Closes a connection over the cap at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _cut_off_if_silent(handler: RequestHandler) -> None:
    # aiohttp has no timeout for request headers; a client that has not completed one request by
    # now holds a connection for nothing (slowloris). `_request_count` counts parsed requests.
    if getattr(handler, "_request_count", 1) == 0 and handler.transport is not None:
        handler.force_close()


async def listen(
    app: web.Application,
    host: str,
    port: int | None,
    *,
    max_connections: int = MAX_CONNECTIONS,
    header_timeout: float = HEADER_TIMEOUT,
    **_: Any,
) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port; the runner (to clean up) and the bound port. Raises AdapterError."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = _GuardedSite(runner, host, port, max_connections, header_timeout)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AdapterError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return runner, site.port
