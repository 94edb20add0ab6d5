"""A fake QQ media server on 127.0.0.1: real tiny images, oversized, slow, broken and redirecting answers, and any
file a test puts there (a voice message, say) at `/files/<name>`."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BIG_SIZE = 6 * 1024 * 1024
SLOW_SECONDS = 30.0  # longer than any test's fetch timeout; handler cancellation ends it at stop()
_BIG_CHUNK = 64 * 1024


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def tiny_png() -> bytes:
    """A valid 1×1 red RGB PNG, built by hand so the tests need no imaging library."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # width, height, bit depth 8, RGB, defaults
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte 0, then one red pixel
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


PNG_BYTES = tiny_png()
# Only the start of a JPEG (SOI + APP0 JFIF): the fetcher sniffs magic bytes and never decodes.
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 16 + b"\xff\xd9"


class FakeImageServer:
    """Serves the fixed routes below and counts requests per path in `hits`.

    `/big.png` and `/big-declared.png` record how many bytes they handed to the socket in `streamed`
    and set `stream_ended[path]` when their handler finished, whether by completing or by the client
    going away (`stream_completed` says which), so tests can prove the client stopped reading early.
    """

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.streamed: Counter[str] = Counter()
        self.stream_completed: dict[str, bool] = {}
        self.stream_ended: dict[str, asyncio.Event] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; return the base URL, e.g. `http://127.0.0.1:PORT`."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.hits[request.path] += 1
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_get("/cat.png", self._png)
        app.router.add_get("/cat.jpg", self._jpg)
        app.router.add_get("/big.png", self._big)
        app.router.add_get("/big-declared.png", self._big_declared)
        app.router.add_get("/slow.png", self._slow)
        app.router.add_get("/notimage", self._html)
        app.router.add_get("/missing", self._missing)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/redirect-file", self._redirect_file)
        app.router.add_get("/redirect-loop", self._redirect_loop)
        app.router.add_get("/files/{name}", self._file)
        # Cancelling handlers on disconnect is what lets `/slow.png` and the streams end promptly.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve `data` at `/files/<name>` (QQ's servers label voices octet-stream); returns its URL."""
        self.files[name] = (data, content_type)
        return f"{self.base_url}/files/{name}"

    async def _file(self, request: web.Request) -> web.Response:
        entry = self.files.get(request.match_info["name"])
        if entry is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=entry[0], content_type=entry[1])

    async def _png(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG_BYTES, content_type="image/png")

    async def _jpg(self, request: web.Request) -> web.Response:
        # QQ's multimedia servers label images like this, so the type must come from the bytes.
        return web.Response(body=JPEG_BYTES, content_type="application/octet-stream")

    async def _stream(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Write PNG magic + BIG_SIZE bytes in chunks, recording how far it got before the client left."""
        path = request.path
        ended = self.stream_ended.setdefault(path, asyncio.Event())
        self.stream_completed[path] = False
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            # A small fixed send buffer (no autotuning) so the kernel cannot swallow the whole body before the
            # client hangs up: otherwise the handler could "complete" even though the client read only a part.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BIG_CHUNK)
        try:
            await response.prepare(request)
            await response.write(PNG_BYTES[:8])
            chunk = b"\x00" * _BIG_CHUNK
            for _ in range(BIG_SIZE // _BIG_CHUNK):
                await response.write(chunk)
                self.streamed[path] += len(chunk)
            await response.write_eof()
            self.stream_completed[path] = True
        except (ConnectionError, asyncio.CancelledError):
            # The client hung up mid-body: exactly what a size-capped fetch should cause.
            pass
        finally:
            ended.set()
        return response

    async def _big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()  # no Content-Length: the client must count bytes itself
        return await self._stream(request, response)

    async def _big_declared(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 8 + BIG_SIZE  # honest header, so the client can refuse before the body
        return await self._stream(request, response)

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return web.Response(body=PNG_BYTES, content_type="image/png")

    async def _html(self, request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><html><body>login required</body></html>", content_type="text/html")

    async def _missing(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="not found")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/cat.png")

    async def _redirect_file(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def _redirect_loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/redirect-loop")
