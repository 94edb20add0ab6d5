"""Start an aiohttp listener for an adapter (reverse WebSocket, webhook) with one clear error."""

from __future__ import annotations

from aiohttp import web

from core.errors import AdapterError

MAX_BODY = 16 * 1024 * 1024


async def listen(app: web.Application, host: str, port: int | None) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port; the runner (to clean up) and the bound port. Raises AdapterError."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AdapterError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return runner, site.port
