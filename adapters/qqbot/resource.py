"""Where pictures and voices for the official QQ API live until Tencent has fetched them: a small file server,
or the user's own uploader (`uploader = "module:function"`, e.g. for COS/OSS)."""

from __future__ import annotations

import importlib
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from loguru import logger

from adapters.listen import listen, listener_app
from adapters.qqbot.settings import QQBotResourceSettings
from core.errors import AdapterError, ConfigError

Uploader = Callable[[bytes], Awaitable[str]]
# File name endings by content type: Tencent needs none, but they tell a person reading the logs what was served.
_SUFFIXES = {"image/png": ".png", "audio/silk": ".silk"}


def load_uploader(spec: str) -> Uploader:
    """The async function named "module:function". Raises ConfigError naming `qqbot.uploader`."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError("qqbot.uploader", f"找不到上传函数 {spec} (cannot load it: {exc})") from None
    if not callable(function):
        raise ConfigError("qqbot.uploader", f"{spec} 不是函数 (not a function)")
    return function  # type: ignore[no-any-return]


class ResourceServer:
    """Serves bytes at `{public_url}{resource_path}/<random name>` for `keep_seconds`, then forgets them."""

    def __init__(self, settings: QQBotResourceSettings) -> None:
        self.settings = settings
        self.files: dict[str, tuple[bytes, float, str]] = {}
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = listener_app(max_body=1024)  # Tencent only GETs: no request needs a body
        app.router.add_get(self.settings.resource_path.rstrip("/") + "/{name}", self._serve)
        self._runner, self.port = await listen(app, self.settings.host, self.settings.port)
        logger.bind(adapter="qqbot").info("serving pictures and voices for Tencent at {}", self.settings.public_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def put(self, data: bytes, content_type: str = "image/png") -> str:
        """Keep `data` for a while; the public URL Tencent fetches it from."""
        self._expire()
        name = secrets.token_urlsafe(16) + _SUFFIXES.get(content_type, "")
        self.files[name] = (data, time.monotonic() + self.settings.keep_seconds, content_type)
        return f"{self.settings.public_url.rstrip('/')}{self.settings.resource_path.rstrip('/')}/{name}"

    def _expire(self) -> None:
        now = time.monotonic()
        for name in [n for n, (_, until, _) in self.files.items() if until < now]:
            del self.files[name]

    async def _serve(self, request: web.Request) -> web.Response:
        self._expire()
        entry = self.files.get(request.match_info["name"])
        if entry is None:
            return web.Response(status=404)
        return web.Response(body=entry[0], content_type=entry[2])


async def public_url(
    data: bytes, uploader: Uploader | None, server: ResourceServer | None, content_type: str = "image/png"
) -> str:
    """A URL Tencent can fetch `data` (of `content_type`) from. Raises AdapterError when neither way is configured."""
    if uploader is not None:
        return await uploader(data)
    if server is not None:
        return server.put(data, content_type)
    raise AdapterError("pictures and voices need [qqbot.resource] public_url or [qqbot] uploader")
