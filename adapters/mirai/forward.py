"""mirai-api-http's ws + http adapters: the bot dials `ws_url/all` and reconnects forever."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import WSMsgType

from adapters.base import json_object
from adapters.frames import parse_frame
from adapters.link import FatalLinkError, Link, LinkError
from adapters.mirai.base import COMMAND_TIMEOUT, HEARTBEAT, WRONG_VERIFY_KEY, MiraiBase, Socket
from core.event import ChatType, Target
from core.message import Image, Message

UPLOAD_TIMEOUT = 30.0
# Images bigger than this (as base64 text) go over HTTP instead of inside the WebSocket frame.
UPLOAD_OVER = 64 * 1024


def ws_address(url: str) -> str:
    """`ws_url` as written in v2 configs (`http://host:8080`) turned into `ws://host:8080/all`."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/all"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class MiraiForward(MiraiBase):
    """Connects to mirai-api-http (verifyKey and qq as headers and query, as it reads both).

    Start-up does not wait for mirai: the bot runs and connects when mirai comes up. The
    connection is a `Link`: every failure is retried with capped, jittered backoff, except a
    refused verifyKey, which stops it with one line naming `[mirai] api_key`. `http_url`
    carries what WebSocket cannot: image uploads.
    """

    mode = "forward ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = ws_address(self.settings.ws_url)
        self.http_url = self.settings.http_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self.link = Link(f"mirai-api-http at {self.url}", self._connect_once, self.log)

    async def start(self) -> None:
        """Begin connecting in the background."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self.supervise(self.link)
        self.log.info("connecting to mirai-api-http at {} (forward ws)", self.url)

    async def stop(self) -> None:
        """Close the link and stop reconnecting."""
        self.link.stop()
        await super().stop()
        if self._session is not None:
            await self._session.close()

    async def _connect_once(self, link: Link) -> str:
        """One connection: handshake, then frames until it closes; raises what `classify` sorts."""
        assert self._session is not None
        auth = {"verifyKey": self.settings.api_key.get_secret_value(), "qq": str(self.settings.qq)}
        async with self._session.ws_connect(
            self.url,
            headers=auth,
            params=auth,
            heartbeat=HEARTBEAT,
            **self.ws_options,
        ) as ws:
            try:
                await self._handshake(ws)
                link.up()
                await self._receive(ws, link.status)
            finally:
                self._deactivate(ws)
        return f"closed by mirai-api-http (code {ws.close_code})"

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        """The server speaks first: `{"syncId":"","data":{"code":0,"session":"..."}}`; a refusal then closes.

        Raises FatalLinkError for a wrong verifyKey (retrying cannot fix the config), LinkError otherwise.
        """
        msg = await ws.receive(timeout=COMMAND_TIMEOUT)
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            raise LinkError(f"closed by mirai-api-http before the handshake (code {ws.close_code})")
        frame = parse_frame(self.log, msg.data, self.max_frame) or {}
        data = json_object(frame.get("data")) if "data" in frame else frame
        session = data.get("session")
        if data.get("code") == 0 and isinstance(session, str) and session:
            await self._activate(ws, session)
            return
        reason = self._refusal(data.get("code"), data.get("msg"))
        if data.get("code") == WRONG_VERIFY_KEY:
            raise FatalLinkError(reason)
        raise LinkError(reason)

    async def _on_handshake(self, ws: Socket, frame: dict[str, Any]) -> None:
        # Only a replaced socket's late frames get here: the handshake is read before the frame loop.
        self.log.debug("dropped a frame from a replaced mirai-api-http connection")

    async def _prepare(self, message: Message, target: Target) -> Message:
        """Large base64 images are uploaded over HTTP and sent by imageId."""
        if not any(isinstance(seg, Image) and len(seg.base64) > UPLOAD_OVER for seg in message):
            return message
        kind = {ChatType.GROUP: "group", ChatType.TEMP: "temp"}.get(target.chat_type, "friend")
        prepared = []
        for seg in message:
            if isinstance(seg, Image) and len(seg.base64) > UPLOAD_OVER:
                image_id = await self._upload_image(seg.base64, kind)
                seg = Image(id=image_id, flash=seg.flash) if image_id else seg
            prepared.append(seg)
        return tuple(prepared)

    async def _upload_image(self, data: str, kind: str) -> str:
        """POST /uploadImage; the imageId, or "" (the caller then sends the bytes inline)."""
        assert self._session is not None
        try:
            raw = base64.b64decode(data)
        except (binascii.Error, ValueError):
            return ""
        form = aiohttp.FormData()
        form.add_field("sessionKey", self.session_key)
        form.add_field("type", kind)
        form.add_field("img", raw, filename="image.png", content_type="application/octet-stream")
        try:
            async with self._session.post(
                f"{self.http_url}/uploadImage",
                data=form,
                headers={"sessionKey": self.session_key},
                timeout=aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT),
            ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.log.warning("image upload to {} failed ({}); sending it inline", self.http_url, type(exc).__name__)
            return ""
        image_id = body.get("imageId") if isinstance(body, dict) else None
        if not isinstance(image_id, str) or not image_id:
            self.log.warning(
                "image upload refused: code {} {}",
                body.get("code") if isinstance(body, dict) else "?",
                body.get("msg", "") if isinstance(body, dict) else "",
            )
            return ""
        return image_id
