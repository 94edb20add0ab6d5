"""Fake web-search providers and a fake web site on 127.0.0.1, for the built-in tools' tests.

`FakeSearch` answers SearXNG's, Tavily's, Bing's and Bocha's endpoints with their documented JSON
shapes (see tools/search.py for the sources) and records every request; `status`, `raw_body` and
`hang` make it fail the ways real providers do. `FakeSite` serves pages for web_fetch and counts hits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


def results(n: int) -> list[tuple[str, str, str]]:
    """n fake (title, url, snippet) triples."""
    return [(f"结果 {i}", f"https://example.com/{i}", f"摘要 {i}  with   spaces") for i in range(1, n + 1)]


class _Server:
    """An aiohttp app on 127.0.0.1 port 0."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> str:
        app = web.Application()
        self.routes(app)
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


class FakeSearch(_Server):
    """All four providers on one server (their paths differ by method or path); `requests` records each call."""

    def __init__(self, hits: int = 30) -> None:
        super().__init__()
        self.results = results(hits)
        self.status = 200  # answer every request with this status (and a JSON error body) when not 200
        self.raw_body: bytes | None = None  # answer with these bytes instead of the provider's JSON
        self.hang = False  # never answer (until the server stops)
        self.requests: list[Recorded] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/search", self._answer(self._searxng))
        app.router.add_post("/search", self._answer(self._tavily))
        app.router.add_get("/v7.0/search", self._answer(self._bing))
        app.router.add_post("/v1/web-search", self._answer(self._bocha))

    def _answer(self, shape: Callable[[Recorded], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            body: Any = None
            if request.method == "POST":
                try:
                    body = await request.json()
                except ValueError:
                    body = None
            recorded = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
            self.requests.append(recorded)
            if self.hang:
                await asyncio.Event().wait()
            if self.status != 200:
                return web.json_response({"detail": {"error": "failed"}}, status=self.status)
            if self.raw_body is not None:
                return web.Response(body=self.raw_body, content_type="application/json")
            return web.json_response(shape(recorded))

        return handler

    def _count(self, value: Any, default: int = 10) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            return default

    def _searxng(self, request: Recorded) -> Any:
        # SearXNG ignores any count: one page of results, with extra fields the client must ignore
        rows = [
            {"title": t, "url": u, "content": s, "engine": "bing", "score": 1.0, "category": "general"}
            for t, u, s in self.results[:20]
        ]
        return {"query": request.query.get("q"), "number_of_results": len(rows), "results": rows, "answers": []}

    def _tavily(self, request: Recorded) -> Any:
        wanted = self._count((request.body or {}).get("max_results"), 5)
        rows = [
            {"title": t, "url": u, "content": s, "score": 0.8, "raw_content": None} for t, u, s in self.results[:wanted]
        ]
        return {"query": (request.body or {}).get("query"), "answer": None, "images": [], "results": rows}

    def _bing(self, request: Recorded) -> Any:
        wanted = self._count(request.query.get("count"), 10)
        rows = [
            {"id": f"https://api.bing.microsoft.com/api/v7/#WebPages.{i}", "name": t, "url": u, "snippet": s}
            for i, (t, u, s) in enumerate(self.results[:wanted])
        ]
        return {"_type": "SearchResponse", "webPages": {"totalEstimatedMatches": 1000, "value": rows}}

    def _bocha(self, request: Recorded) -> Any:
        wanted = self._count((request.body or {}).get("count"), 10)
        summary = bool((request.body or {}).get("summary"))
        rows = []
        for t, u, s in self.results[:wanted]:
            row = {"id": None, "name": t, "url": u, "displayUrl": u, "snippet": s, "siteName": "example"}
            if summary:
                row["summary"] = f"{s}（完整摘要）"
            rows.append(row)
        return {
            "code": 200,
            "log_id": "0",
            "msg": None,
            "data": {"_type": "SearchResponse", "webPages": {"value": rows, "someResultsRemoved": False}},
        }


class FakeSite(_Server):
    """Pages for web_fetch: `pages[path] = (status, headers, body)`; `streams[path] = (content type, chunk, count)`
    are sent chunked without a Content-Length; paths in `hanging` never answer. `hits` lists every request's path,
    `host_headers` its Host header, `streamed` the bytes each stream wrote before it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.streams: dict[str, tuple[str, bytes, int]] = {}
        self.hanging: set[str] = set()
        self.hits: list[str] = []
        self.host_headers: list[str] = []
        self.streamed: dict[str, int] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._serve)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        self.host_headers.append(request.headers.get("Host", ""))
        if request.path in self.hanging:
            await asyncio.Event().wait()
        if request.path in self.streams:
            return await self._stream(request)
        status, headers, body = self.pages.get(request.path, (404, {"Content-Type": "text/plain"}, b"not found"))
        return web.Response(status=status, headers=headers, body=body)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        content_type, chunk, count = self.streams[request.path]
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.streamed[request.path] = 0
        try:
            for _ in range(count):
                await response.write(chunk)
                self.streamed[request.path] += len(chunk)
        except (ConnectionError, RuntimeError):  # the client stopped reading: what the cap should do
            return response
        await response.write_eof()
        return response
