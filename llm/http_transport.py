"""An httpx2 transport over aiohttp, so the openai client shares the bot's one HTTP stack."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import httpx2

# Set by aiohttp from the body and the URL; forwarding httpx2's copies would duplicate them.
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class _Body(httpx2.AsyncByteStream):
    """The aiohttp response body as the byte stream httpx2 reads (and closes)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise httpx2.ReadTimeout("timed out reading the response", request=self._request) from None
        except aiohttp.ClientError as exc:
            raise httpx2.ReadError(type(exc).__name__, request=self._request) from None

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """Sends the openai SDK's requests with aiohttp.

    The default httpx2 stack (httpcore over anyio) cost about 0.3 ms of CPU per request more
    than aiohttp in the benchmark, a sixth of the bot's whole budget per message. Bodies are
    passed through undecoded: httpx2 decodes what its own Accept-Encoding asked for.
    `proxy` is an http(s) proxy URL; without one the usual *_PROXY environment variables apply.
    """

    def __init__(self, proxy: str = "") -> None:
        if proxy and not proxy.lower().startswith(("http://", "https://")):
            raise ValueError("only http:// and https:// proxies are supported")
        self._proxy = proxy or None
        self._env_proxies: dict[tuple[str, str], str | None] = {}
        self._session: aiohttp.ClientSession | None = None

    def _proxy_for(self, url: httpx2.URL) -> str | None:
        """The configured proxy, else HTTP(S)_PROXY / NO_PROXY from the environment for this origin.

        Looked up once per origin: aiohttp's trust_env reads the environment on every request,
        which cost more CPU than the rest of the request.
        """
        if self._proxy:
            return self._proxy
        origin = (url.scheme, url.host)
        if origin not in self._env_proxies:
            proxies = urllib.request.getproxies()
            bypass = bool(url.host) and urllib.request.proxy_bypass(url.host)
            self._env_proxies[origin] = None if bypass else proxies.get(url.scheme)
        return self._env_proxies[origin]

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                trust_env=False,
                connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
            )
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout", {})
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _HOP_HEADERS]
        try:
            response = await self._client_session().request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread(),
                proxy=self._proxy_for(request.url),
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors too
            raise httpx2.ReadTimeout("timed out", request=request) from None
        except aiohttp.InvalidURL:
            raise httpx2.UnsupportedProtocol("invalid URL", request=request) from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError):
            raise httpx2.ConnectError("connection failed", request=request) from None
        except aiohttp.ClientError as exc:
            raise httpx2.NetworkError(type(exc).__name__, request=request) from None
        return httpx2.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
