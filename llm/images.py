"""Download the images users send and turn them into `data:` URLs a vision model accepts."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import aiohttp
from loguru import logger

log = logger.bind(adapter="llm")

_CHUNK = 64 * 1024
# Enough bytes to tell every supported format apart (WEBP needs 12, the BMP check 18).
_SNIFF_BYTES = 32
# BITMAPINFOHEADER and its variants; checking it makes "BM" at the start of some text file not count as an image.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

# Decides from the first bytes of a download whether it is wanted: a non-empty result (a MIME type,
# an audio container name) accepts it, None or "" refuses it.
Sniff = Callable[[bytes], str | None]


def sniff_mime(head: bytes) -> str | None:
    """The image MIME type from the magic bytes, or None: QQ servers often say application/octet-stream."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 18 and head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "image/bmp"
    return None


def host_of(url: str) -> str:
    """Only the host goes into logs: QQ image URLs carry auth tokens in the query string."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


class _Rejected(Exception):
    """A download that is not used; the message is safe to log (it never contains the URL)."""


class ImageFetcher:
    """Fetch images (and voices, `fetch_bytes`) over one shared aiohttp session with size, time and count limits."""

    def __init__(self, *, max_bytes: int = 5 * 1024 * 1024, timeout: float = 10.0, max_images: int = 4) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_images = max_images
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop, not whichever loop existed at construction.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(8, 2 * self.max_images)),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Images and voices come from the QQ side (often 127.0.0.1 / LAN), never through the LLM's proxy.
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> str | None:
        """One image as `data:<mime>;base64,...`, or None (with one warning) when it cannot be used."""
        body = await self.fetch_bytes(url, sniff_mime, what="image")
        if body is None:
            return None
        mime = sniff_mime(body[:_SNIFF_BYTES]) or "application/octet-stream"  # fetch_bytes checked it
        return f"data:{mime};base64,{base64.b64encode(body).decode('ascii')}"

    async def fetch_bytes(self, url: str, sniff: Sniff, what: str = "voice") -> bytes | None:
        """The body at `url` when `sniff(first bytes)` accepts it, else None with one warning naming only the host.

        The same limits for every kind of download: `max_bytes`, one `timeout` for connect, redirects
        (at most 3) and the whole body, status 200 only, no proxy from the environment.
        """
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https"):
            log.warning("{} from {} not used: scheme {!r} is not http(s)", what, host_of(url), scheme)
            return None
        try:
            # One deadline for connect, redirects and the whole body: a slow trickle must not hold a reply.
            async with asyncio.timeout(self.timeout):
                return await self._download(url, sniff, what)
        except _Rejected as exc:
            log.warning("{} from {} not used: {}", what, host_of(url), exc)
        except TimeoutError:
            log.warning("{} from {} not used: timed out after {}s", what, host_of(url), self.timeout)
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            # Only the exception type: aiohttp's messages can include the full URL with its token.
            log.warning("{} from {} not used: {}", what, host_of(url), type(exc).__name__)
        return None

    async def _download(self, url: str, sniff: Sniff, what: str) -> bytes:
        # aiohttp refuses redirects to non-http(s) schemes itself (NonHttpUrlRedirectClientError).
        async with self._get_session().get(url, allow_redirects=True, max_redirects=3) as response:
            if response.status != 200:
                raise _Rejected(f"HTTP {response.status}")
            declared = response.content_length
            if declared is not None and declared > self.max_bytes:
                response.close()  # drop the connection rather than drain a body we will not use
                raise _Rejected(f"Content-Length {declared} exceeds {self.max_bytes} bytes")
            body = bytearray()
            sniffed = False
            # Read in chunks: Content-Length may be absent (chunked) or wrong, so the cap is enforced on real bytes.
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > self.max_bytes:
                    response.close()
                    raise _Rejected(f"body exceeds {self.max_bytes} bytes")
                if not sniffed and len(body) >= _SNIFF_BYTES:
                    sniffed = True
                    if not sniff(bytes(body[:_SNIFF_BYTES])):
                        response.close()  # an HTML error page etc.: no point reading the rest
                        raise _Rejected(f"not an {what}" if what[:1] in "aeiou" else f"not a {what}")
            if not sniffed and not sniff(bytes(body)):
                raise _Rejected(f"not an {what}" if what[:1] in "aeiou" else f"not a {what}")
            return bytes(body)

    async def fetch_all(self, urls: Sequence[str]) -> list[str]:
        """The first `max_images` images fetched concurrently, in the given order, failures left out."""
        results = await asyncio.gather(*(self.fetch(url) for url in urls[: self.max_images]))
        return [data for data in results if data is not None]
