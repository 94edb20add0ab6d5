"""web_fetch: one web page as text, without letting a chat user reach the bot's own network (SSRF).

Every hop (the URL and each redirect) is checked the same way: http/https only, no user:password@,
the host resolved once and refused when ANY of its addresses is not a public unicast address; the
connection then goes to exactly those vetted addresses (a resolver on the connector that knows only
them), so a second DNS answer cannot point it elsewhere (DNS rebinding). The Host header and TLS SNI
stay the URL's own name. No proxy from the environment: a proxy would connect on our behalf and
bypass the address check. The address policy can be changed only by a constructor argument (tests).
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from loguru import logger
from yarl import URL

from tools.base import ToolError, ToolSpec

log = logger.bind(adapter="tools")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses the host resolves to (as text); tests inject a mapping of names.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
# Whether one resolved address may be connected to.
AddressPolicy = Callable[[IPAddress], bool]

MAX_REDIRECTS = 5
TRUNCATED = "…（已截断）"
REFUSED = "拒绝访问：该网址指向内网、本机或保留地址"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_TEXT_TYPES = frozenset({"text/plain", "application/json", "application/xml", "text/xml"})
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)
_HEADERS = {
    "User-Agent": "Mozilla/5.0 (compatible; chatgpt-qq-bot web_fetch)",
    "Accept": "text/html,application/xhtml+xml,text/plain,application/json,application/xml;q=0.9,*/*;q=0.1",
    "Accept-Encoding": "gzip, deflate",  # decoded here with a size cap (no unbounded decompression)
}

# Refused whatever the Python version's `is_global` says (its tables changed between 3.11 and 3.13).
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "::1/128",
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # old site-local
        "ff00::/8",  # multicast
        "2001::/32",  # Teredo: the IPv4 end is obfuscated, refuse the whole block
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 (2002::/16)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(ip: IPAddress) -> bool:
    """True only for a globally routable unicast address: what web_fetch may connect to."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not is_public_address(embedded):
            return False
    if any(ip.version == net.version and ip in net for net in _BLOCKED_NETWORKS):
        return False
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, through the system resolver (off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def parse_url(text: str) -> URL:
    """The URL as aiohttp will request it, or ToolError: http(s) only, a host, no user:password@."""
    try:
        url = URL(text)
        host, port, scheme = url.raw_host, url.port, url.scheme.lower()
        has_userinfo = url.raw_user is not None or url.raw_password is not None
    except (ValueError, TypeError):  # UnicodeError (bad IDNA) is a ValueError
        raise ToolError("网址格式不正确") from None
    if scheme not in ("http", "https"):
        raise ToolError("只支持 http:// 或 https:// 网址")
    if has_userinfo:
        raise ToolError("网址不能包含用户名或密码")
    if not host or port is None:
        raise ToolError("网址缺少主机名")
    return url


async def vet_host(host: str, port: int, resolver: Resolver, allowed: AddressPolicy) -> list[str]:
    """The addresses to connect to for `host`, all allowed by `allowed`; ToolError when any is not."""
    literal = _literal_address(host)
    if literal is not None:
        addresses: Sequence[str] = [literal]
    else:
        try:
            addresses = await resolver(host, port)
        except asyncio.CancelledError:
            raise
        except Exception:  # gaierror, UnicodeError for odd names, or whatever an injected resolver raises
            raise ToolError("无法解析网址的主机名") from None
    vetted: list[str] = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(str(text).split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
        except ValueError:
            raise ToolError("主机名解析结果无效") from None
        if not allowed(ip):
            raise ToolError(REFUSED)
        vetted.append(str(ip))
    if not vetted:
        raise ToolError("无法解析网址的主机名")
    return vetted


def _literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class _PinnedResolver(AbstractResolver):
    """The connector's resolver: answers only with the addresses vetted for a host, never asks DNS."""

    def __init__(self) -> None:
        self.pins: dict[str, list[str]] = {}

    def pin(self, host: str, addresses: list[str]) -> None:
        self.pins[host.rstrip(".").lower()] = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.pins.get(host.rstrip(".").lower())
        if not addresses:
            raise OSError("host was not vetted")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Page:
    """A fetched document: its type, decoded text and whether the byte cap cut it."""

    content_type: str
    text: str
    truncated: bool


_SKIP_TAGS = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe", "object"})
_BLOCK_TAGS = frozenset(
    {
        *("p", "div", "section", "article", "main", "header", "footer", "aside", "br", "hr", "tr", "table"),
        *("thead", "tbody", "ul", "ol", "dl", "dt", "dd", "blockquote", "pre", "form", "figure", "figcaption"),
        *("address", "details", "summary"),
    }
)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}


class _TextExtractor(HTMLParser):
    """HTML to readable text: title apart; headings, paragraphs, list items and link text kept;
    script, style, navigation and other non-content elements dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag == "title":
            self._in_title = True
        elif tag in _HEADINGS:
            self.parts.append("\n" + "#" * _HEADINGS[tag] + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _BLOCK_TAGS or tag in _HEADINGS or tag == "li":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        (self.title_parts if self._in_title else self.parts).append(data)


def _collapse_lines(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line and line not in ("-", "#"))


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML document; whitespace collapsed, one line per block."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except Exception:  # html.parser is lenient, but a parse bug must not lose what was read so far
        log.debug("web_fetch: HTML parser stopped early")
    title = " ".join("".join(extractor.title_parts).split())
    return title, _collapse_lines("".join(extractor.parts))


def _charset(response_charset: str | None, body: bytes, is_html: bool) -> str:
    candidates = [response_charset]
    if is_html:
        match = _META_CHARSET.search(body[:4096])
        candidates.append(match.group(1).decode("ascii") if match else None)
    for name in candidates:
        if name:
            try:
                return codecs.lookup(name).name
            except LookupError:
                continue
    return "utf-8"


def _decompressor(content_encoding: str) -> Any:
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    raise ToolError("不支持的内容编码")


def _mime_label(mime: str) -> str:
    """The server's content type made safe to show: printable, short."""
    cleaned = "".join(ch for ch in mime if ch.isprintable())[:60]
    return cleaned or "（未声明）"


class WebFetch:
    """The `web_fetch` tool: args {url}; the page's title and text, capped in bytes read and characters returned."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_chars: int,
        timeout: float,
        resolver: Resolver = resolve_host,
        allowed: AddressPolicy = is_public_address,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self.timeout = timeout
        self._resolver = resolver
        self._allowed = allowed
        self._spec = ToolSpec(
            name="web_fetch",
            description=(
                "读取一个公开网页（http/https），返回标题和正文文字。用户发来链接或问“这个链接说了什么”时使用；"
                "不能访问内网地址。 / Fetch a public web page (http/https) and return its title and text; "
                "use it when the user gives a link or asks what a page says. Private addresses are refused."
            ),
            parameters={
                "type": "object",
                "properties": {"url": {"type": "string", "description": "完整网址 / the full URL, http(s)://…"}},
                "required": ["url"],
                "additionalProperties": False,
            },
            progress="正在读取网页…",
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        raw = arguments.get("url")
        if not isinstance(raw, str) or not raw.strip():
            raise ToolError("需要参数 url（网址）")
        url = parse_url(raw.strip())
        host = url.host or "?"
        try:
            async with asyncio.timeout(self.timeout):
                page = await self._fetch(url)
            text = await asyncio.to_thread(self._render, page)
        except ToolError as exc:
            log.info("web_fetch {}: {}", host, exc)
            raise
        except TimeoutError:
            log.info("web_fetch {}: timed out after {}s", host, self.timeout)
            raise ToolError(f"读取网页超时（{self.timeout:g} 秒）") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Only the exception type: aiohttp's messages may carry the full URL.
            log.info("web_fetch {}: {}", host, type(exc).__name__)
            raise ToolError(f"无法读取网页（{type(exc).__name__}）") from None
        log.debug("web_fetch {}: {} chars", host, len(text))
        return text

    async def _fetch(self, url: URL) -> Page:
        resolver = _PinnedResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=4)
        async with aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False, headers=_HEADERS
        ) as session:
            for _hop in range(MAX_REDIRECTS + 1):
                host, port = url.raw_host or "", url.port or 0
                resolver.pin(host, await vet_host(host, port, self._resolver, self._allowed))
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECT_STATUSES:
                        url = self._next_hop(url, response.headers.get("Location"))
                        continue
                    return await self._read(response)
        raise ToolError(f"重定向次数过多（超过 {MAX_REDIRECTS} 次）")

    @staticmethod
    def _next_hop(current: URL, location: str | None) -> URL:
        if not location:
            raise ToolError("网页重定向缺少目标地址")
        try:
            target = current.join(URL(location))
        except (ValueError, TypeError):
            raise ToolError("网页重定向的目标地址无效") from None
        return parse_url(str(target))

    async def _read(self, response: aiohttp.ClientResponse) -> Page:
        if not 200 <= response.status < 300:
            raise ToolError(f"网页返回 HTTP {response.status}")
        mime = response.content_type.lower() if "Content-Type" in response.headers else ""
        if not (mime in _HTML_TYPES or mime in _TEXT_TYPES or mime.endswith("+xml") or mime.endswith("+json")):
            raise ToolError(f"不支持的内容类型 {_mime_label(mime)}（只读取网页、纯文本、JSON 和 XML）")
        body, truncated = await self._read_body(response)
        charset = _charset(response.charset, body, mime in _HTML_TYPES)
        return Page(mime, body.decode(charset, errors="replace"), truncated)

    async def _read_body(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """At most `max_bytes` (after decompression); the rest is not read and the connection is dropped.

        Content-Length is not trusted either way: the cap counts the bytes actually received."""
        decompressor = _decompressor(response.headers.get("Content-Encoding", ""))
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            if decompressor is not None:
                try:
                    chunk = decompressor.decompress(chunk, self.max_bytes + 1 - len(body))
                except zlib.error:
                    raise ToolError("网页压缩数据损坏") from None
            body += chunk
            if len(body) > self.max_bytes:
                response.close()
                return bytes(body[: self.max_bytes]), True
        return bytes(body), False

    def _render(self, page: Page) -> str:
        if page.content_type in _HTML_TYPES:
            title, text = html_to_text(page.text)
            text = f"标题：{title}\n\n{text}" if title else text
        else:
            text = page.text.strip()
        if not text.strip():
            text = "（网页没有可读的文字）"
        if len(text) > self.max_chars:
            return text[: self.max_chars] + TRUNCATED
        return text + TRUNCATED if page.truncated else text
