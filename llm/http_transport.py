"""An httpx2 transport over aiohttp, so the openai client shares the bot's one HTTP stack."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import aiohttp_socks
import httpx2
from python_socks import parse_proxy_url

# Set by aiohttp from the body and the URL; forwarding httpx2's copies would duplicate them.
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

# Proxy scheme -> (the scheme python-socks parses, resolve host names at the proxy). python-socks knows only
# socks4 and socks5 and by default sends socks5 host names to the proxy; curl's convention is spelled out with
# rdns instead, so socks5:// resolves locally and socks5h:// lets the proxy resolve (past a poisoned local DNS).
_SOCKS_SCHEMES: dict[str, tuple[str, bool]] = {
    "socks4": ("socks4", False),
    "socks4a": ("socks4", True),
    "socks5": ("socks5", False),
    "socks5h": ("socks5", True),
}
_ACCEPTED_SCHEMES = ", ".join(f"{scheme}://" for scheme in ("http", "https", *_SOCKS_SCHEMES))


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
    `proxy` is an http(s):// or socks4(a):// / socks5(h):// proxy URL, optionally with user:password;
    without one the usual *_PROXY environment variables apply. Error messages never repeat the URL,
    which may hold a password.
    """

    def __init__(self, proxy: str = "") -> None:
        self._proxy: str | None = None
        self._socks: tuple[str, bool] | None = None  # (URL for python-socks, rdns)
        if proxy:
            # never echoed: without "://" this "scheme" is the whole string, password included
            scheme = proxy.partition("://")[0].lower()
            if scheme in ("http", "https"):
                self._proxy = proxy
            elif scheme in _SOCKS_SCHEMES:
                self._socks = _socks_settings(proxy, scheme)
            else:
                raise ValueError(f"unsupported proxy scheme; use one of {_ACCEPTED_SCHEMES}")
        self._env_proxies: dict[tuple[str, str], str | None] = {}
        self._session: aiohttp.ClientSession | None = None

    def _proxy_for(self, url: httpx2.URL) -> str | None:
        """The configured proxy, else HTTP(S)_PROXY / NO_PROXY from the environment for this origin.

        Looked up once per origin: aiohttp's trust_env reads the environment on every request,
        which cost more CPU than the rest of the request.
        """
        if self._proxy or self._socks:
            return self._proxy  # a SOCKS proxy is the session's connector; environment proxies must not stack on it
        origin = (url.scheme, url.host)
        if origin not in self._env_proxies:
            proxies = urllib.request.getproxies()
            bypass = bool(url.host) and urllib.request.proxy_bypass(url.host)
            self._env_proxies[origin] = None if bypass else proxies.get(url.scheme)
        return self._env_proxies[origin]

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.TCPConnector
            # limit=0: no connection cap here. aiohttp's default of 100 silently queued a burst behind
            # the hundredth request; how many run at once is the account pool's `max_concurrency`.
            if self._socks is not None:
                url, rdns = self._socks
                connector = aiohttp_socks.ProxyConnector.from_url(url, rdns=rdns, limit=0, ttl_dns_cache=300)
            else:
                connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(auto_decompress=False, trust_env=False, connector=connector)
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
        # aiohttp-socks' errors subclass neither aiohttp.ClientError nor OSError/TimeoutError; their
        # messages name the proxy's host:port and the SOCKS failure, never the credentials
        except aiohttp_socks.ProxyTimeoutError as exc:
            raise httpx2.ConnectTimeout(f"proxy: {exc}", request=request) from None
        except (aiohttp_socks.ProxyConnectionError, aiohttp_socks.ProxyError) as exc:
            raise httpx2.ConnectError(f"proxy: {exc}", request=request) from None
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


def _socks_settings(proxy: str, scheme: str) -> tuple[str, bool]:
    """The URL python-socks accepts and the rdns flag for a socks* proxy; checked now, not at the first request."""
    python_socks_scheme, rdns = _SOCKS_SCHEMES[scheme]
    url = python_socks_scheme + proxy[len(scheme) :]
    try:
        parse_proxy_url(url)
    except (ValueError, TypeError):
        # `from None`: python-socks' and urllib's messages can quote the URL's parts, password included
        raise ValueError(f"malformed {scheme}:// proxy URL; expected {scheme}://[user:password@]host:port") from None
    return url, rdns
