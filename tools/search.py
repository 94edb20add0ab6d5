"""web_search: titles, URLs and snippets from the configured provider (SearXNG, Tavily, Bing or Bocha).

Request and response shapes, checked against the providers' own material:
- SearXNG: GET <instance>/search?q=…&format=json → {"results": [{"title", "url", "content"}]}; the JSON
  format must be enabled in the instance's settings.yml (`search.formats`), else it answers 403
  (searxng/searxng docs/dev/search_api.rst).
- Tavily: POST https://api.tavily.com/search {"query", "max_results"} with `Authorization: Bearer <key>`
  → {"results": [{"title", "url", "content", "score"}]} (tavily-ai/tavily-python tavily/async_tavily.py).
- Bing Web Search v7: GET https://api.bing.microsoft.com/v7.0/search?q=…&count=… with
  `Ocp-Apim-Subscription-Key` → {"webPages": {"value": [{"name", "url", "snippet"}]}} (Microsoft's
  Bing-Web-Search search-responses.md).
- Bocha: POST https://api.bochaai.com/v1/web-search {"query", "count", "summary"} with
  `Authorization: Bearer <key>` → {"code": 200, "data": {"webPages": {"value": [{"name", "url", "snippet",
  "summary"}]}}}, "Bing-compatible" (Bocha's Web Search API reference, as mirrored in
  yoko19191/bocha-ai-mcp-server docs/1_websearch_api_reference.md).

The key is sent only in the provider's header, never logged and never in a ToolError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from loguru import logger
from yarl import URL

from tools.base import ToolError, ToolSpec

log = logger.bind(adapter="tools")

MAX_QUERY_CHARS = 400  # Tavily refuses longer queries; long ones search badly everywhere
MAX_SNIPPET_CHARS = 400
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class SearchHit:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One HTTP request to a provider: method, path below the endpoint base, query, JSON body, headers."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Provider:
    base: str  # the public endpoint's base; `[tools] search_url` replaces it
    build: Callable[[str, int, str], SearchRequest]  # (query, count, api key) -> request
    parse: Callable[[Any], list[SearchHit]]  # decoded JSON -> hits
    needs_key: bool


def _text(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _hits(items: Any, title_key: str, snippet_keys: tuple[str, ...]) -> list[SearchHit]:
    """Hits from a list of result objects; entries without a URL or of the wrong shape are skipped."""
    if not isinstance(items, list):
        return []
    hits: list[SearchHit] = []
    for item in items:
        if not isinstance(item, dict) or not _text(item.get("url")):
            continue
        snippet = next((_text(item.get(key)) for key in snippet_keys if _text(item.get(key))), "")
        hits.append(SearchHit(_text(item.get(title_key)) or "（无标题）", _text(item.get("url")), snippet))
    return hits


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _searxng_request(query: str, count: int, key: str) -> SearchRequest:
    return SearchRequest("GET", "/search", params={"q": query, "format": "json"})


def _tavily_request(query: str, count: int, key: str) -> SearchRequest:
    return SearchRequest(
        "POST", "/search", body={"query": query, "max_results": count}, headers={"Authorization": f"Bearer {key}"}
    )


def _bing_request(query: str, count: int, key: str) -> SearchRequest:
    return SearchRequest(
        "GET",
        "/v7.0/search",
        params={"q": query, "count": str(count), "textDecorations": "false", "textFormat": "Raw"},
        headers={"Ocp-Apim-Subscription-Key": key},
    )


def _bocha_request(query: str, count: int, key: str) -> SearchRequest:
    return SearchRequest(
        "POST",
        "/v1/web-search",
        body={"query": query, "count": count, "summary": True},
        headers={"Authorization": f"Bearer {key}"},
    )


def _bocha_parse(data: Any) -> list[SearchHit]:
    code = _get(data, "code")
    if code is not None and str(code) != "200":
        raise ToolError(f"搜索失败：服务返回 code {str(code)[:10]}")
    # the summary (when asked for) is longer and better than the snippet
    return _hits(_get(data, "data", "webPages", "value"), "name", ("summary", "snippet"))


PROVIDERS: dict[str, Provider] = {
    "searxng": Provider(
        "", _searxng_request, lambda data: _hits(_get(data, "results"), "title", ("content",)), needs_key=False
    ),
    "tavily": Provider(
        "https://api.tavily.com",
        _tavily_request,
        lambda data: _hits(_get(data, "results"), "title", ("content",)),
        needs_key=True,
    ),
    "bing": Provider(
        "https://api.bing.microsoft.com",
        _bing_request,
        lambda data: _hits(_get(data, "webPages", "value"), "name", ("snippet",)),
        needs_key=True,
    ),
    "bocha": Provider("https://api.bochaai.com", _bocha_request, _bocha_parse, needs_key=True),
}


def endpoint(base: str, path: str) -> str:
    """`base` + `path`, unless `base` already ends with the path (a full endpoint URL was configured)."""
    base = base.rstrip("/")
    return base if base.endswith(path) else base + path


def format_hits(hits: list[SearchHit]) -> str:
    if not hits:
        return "没有找到相关结果。"
    blocks = []
    for number, hit in enumerate(hits, 1):
        snippet = hit.snippet if len(hit.snippet) <= MAX_SNIPPET_CHARS else hit.snippet[:MAX_SNIPPET_CHARS] + "…"
        blocks.append(f"{number}. {hit.title}\n{hit.url}\n{snippet}".rstrip())
    return "\n\n".join(blocks)


class WebSearch:
    """The `web_search` tool: args {query, count?}; at most `max_results` numbered title/URL/snippet blocks."""

    def __init__(self, provider: str, *, api_key: str, search_url: str, max_results: int, timeout: float) -> None:
        if provider not in PROVIDERS:
            raise ToolError(f"未知的搜索服务 {provider!r}")
        self.provider_name = provider
        self._provider = PROVIDERS[provider]
        self._api_key = api_key
        self._base = search_url or self._provider.base
        if not self._base:
            raise ToolError("搜索服务缺少地址（[tools] search_url）")
        if self._provider.needs_key and not api_key:
            raise ToolError("搜索服务缺少 API key（[tools] search_api_key）")
        self.max_results = max_results
        self.timeout = timeout
        self._spec = ToolSpec(
            name="web_search",
            description=(
                "在互联网上搜索，返回标题、网址和摘要。用于新闻、近况、最新数据等你不确定或可能过时的信息；"
                "需要细节时再用 web_fetch 读取结果网页。 / Search the web; returns titles, URLs and snippets. "
                "Use it for news, recent events and facts you may not know; fetch a result with web_fetch for details."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "搜索词 / the search query"},
                    "count": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": max_results,
                        "description": f"结果数（最多 {max_results}）/ number of results (at most {max_results})",
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            progress="正在搜索…",
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    def _count(self, value: Any) -> int:
        if isinstance(value, bool):
            return self.max_results
        try:
            wanted = int(value) if value is not None else self.max_results
        except (TypeError, ValueError, OverflowError):
            wanted = self.max_results
        return max(1, min(self.max_results, wanted))

    async def call(self, arguments: dict[str, Any]) -> str:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("需要参数 query（搜索词）")
        count = self._count(arguments.get("count"))
        request = self._provider.build(query.strip()[:MAX_QUERY_CHARS], count, self._api_key)
        url = endpoint(self._base, request.path)
        host = URL(url).host or "?"
        try:
            async with asyncio.timeout(self.timeout):
                data = await self._send(url, request)
            hits = self._provider.parse(data)[:count]
        except ToolError as exc:
            log.info("web_search {} ({}): {}", self.provider_name, host, exc)
            raise
        except TimeoutError:
            log.info("web_search {} ({}): timed out after {}s", self.provider_name, host, self.timeout)
            raise ToolError(f"搜索超时（{self.timeout:g} 秒）") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.info("web_search {} ({}): {}", self.provider_name, host, type(exc).__name__)
            raise ToolError(f"搜索失败：无法连接搜索服务（{type(exc).__name__}）") from None
        log.debug("web_search {} ({}): {} results", self.provider_name, host, len(hits))
        return format_hits(hits)

    async def _send(self, url: str, request: SearchRequest) -> Any:
        headers = {"Accept": "application/json", **request.headers}
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.request(
                request.method, url, params=request.params or None, json=request.body, headers=headers
            ) as response,
        ):
            if response.status != 200:
                raise ToolError(f"搜索失败：HTTP {response.status}")
            body = await self._read_capped(response)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ToolError("搜索失败：返回内容不是有效的 JSON") from None

    @staticmethod
    async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                response.close()
                raise ToolError("搜索失败：返回内容过大")
        return bytes(body)
