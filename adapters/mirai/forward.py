"""mirai-api-http's ws + http adapters: the bot dials `ws_url/all` and reconnects forever."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from adapters.link import keep_connected
from adapters.mirai.base import HEARTBEAT, MAX_FRAME, MiraiBase, Socket
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

    Start-up does not wait for mirai: the bot runs and connects when mirai comes up. Every
    failure is retried with capped, jittered backoff; the log says once when the link goes down
    and once when it is back. `http_url` carries what WebSocket cannot: image uploads.
    """

    mode = "forward ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = ws_address(self.settings.ws_url)
        self.http_url = self.settings.http_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Begin connecting in the background."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self.tasks.spawn(self._run(), name=f"{self.instance}-link")
        self.log.info("connecting to mirai-api-http at {} (forward ws)", self.url)

    async def stop(self) -> None:
        """Close the link and stop reconnecting."""
        await super().stop()
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        await keep_connected(f"mirai-api-http at {self.url}", self._connect_once, lambda: self._stopping, self.log)

    async def _connect_once(self) -> tuple[bool, str]:
        assert self._session is not None
        auth = {"verifyKey": self.settings.api_key.get_secret_value(), "qq": str(self.settings.qq)}
        async with self._session.ws_connect(
            self.url, headers=auth, params=auth, heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME
        ) as ws:
            await self._receive(ws)
        return self._deactivate(ws), f"closed by mirai-api-http (code {ws.close_code})"

    async def _on_handshake(self, ws: Socket, frame: dict[str, Any]) -> None:
        # The server speaks first: {"syncId":"","data":{"code":0,"session":"..."}}; a refusal closes.
        data = frame.get("data")
        data = data if isinstance(data, dict) else frame
        if data.get("code") == 0 and data.get("session"):
            await self._activate(ws, str(data["session"]))
        else:
            self._verify_failed(data.get("code"), data.get("msg"))

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
