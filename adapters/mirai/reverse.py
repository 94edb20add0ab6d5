"""mirai-api-http's reverse-ws adapter: the bot listens, mirai-api-http dials in, the bot verifies."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from aiohttp import web

from adapters.listen import listen
from adapters.mirai.base import HEARTBEAT, MAX_FRAME, MiraiBase, Socket

VERIFY_SYNC_ID = "1"
EXAMPLE_VERIFY_KEY = "1234567890"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class MiraiReverse(MiraiBase):
    """Listens on reverse_ws_host:reverse_ws_port (any path).

    The first frame is ours: `verify` with verifyKey and qq. A refusal is the bare
    `{"code":1}`; mirai-api-http keeps the socket open, so verify is asked again later.
    """

    mode = "reverse-ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen for mirai-api-http; returns without waiting for it."""
        host, port = self.settings.reverse_ws_host, self.settings.reverse_ws_port
        app = web.Application(client_max_size=MAX_FRAME)
        app.router.add_get("/{tail:.*}", self._accept)
        self._runner, self.port = await listen(app, host, port)
        self.log.info("waiting for mirai-api-http on ws://{}:{}/ (reverse-ws)", host, self.port)
        self._warn_if_exposed(host)

    def _warn_if_exposed(self, host: str) -> None:
        if host in LOOPBACK:
            return
        if not self.settings.reverse_ws_token:
            self.log.warning(
                "SECURITY: listening on {} without [mirai] reverse_ws_token: anyone who can reach this port "
                "receives the verifyKey and can feed the bot messages. Set reverse_ws_token and add it to "
                "mirai-api-http's extraHeaders (Authorization: Bearer <token>), or firewall the port.",
                host,
            )
        if self.settings.api_key.get_secret_value() == EXAMPLE_VERIFY_KEY:
            self.log.warning("SECURITY: [mirai] api_key is still the example value 1234567890; change it on both sides")

    async def stop(self) -> None:
        """Close the socket and the listener."""
        await super().stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: web.Request) -> bool:
        token = self.settings.reverse_ws_token
        if not token:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), token.encode())

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            self.log.warning("refused a connection from {}: wrong or missing reverse_ws_token", request.remote)
            return web.Response(status=401, text="unauthorized")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        self.log.info("mirai-api-http connected from {}, verifying", request.remote)
        try:
            await self._send_verify(ws)
            await self._receive(ws)
        finally:
            if self._deactivate(ws) and not self._stopping:
                self.log.warning("mirai-api-http disconnected; waiting for it to reconnect")
        return ws

    async def _send_verify(self, ws: Socket) -> None:
        frame = {
            "syncId": VERIFY_SYNC_ID,
            "command": "verify",
            "subCommand": None,
            "content": {
                "verifyKey": self.settings.api_key.get_secret_value(),
                "sessionKey": None,
                "qq": self.settings.qq,
            },
        }
        await ws.send_str(json.dumps(frame))

    async def _on_handshake(self, ws: Socket, frame: dict[str, Any]) -> None:
        data = frame.get("data") if "syncId" in frame else frame  # a refusal comes bare
        if "syncId" in frame and str(frame.get("syncId")) != VERIFY_SYNC_ID:
            self.log.debug("dropped a frame from an unverified connection")
            return
        data = data if isinstance(data, dict) else {}
        if data.get("code") == 0:
            await self._activate(ws, str(data.get("session", "")))
            return
        self._verify_failed(data.get("code"), data.get("msg"))
        # mirai-api-http keeps the socket open after a refusal; ask again later in case the bot
        # account logs in meanwhile, without flooding the log.
        self.tasks.spawn(self._retry_verify(ws), name=f"{self.instance}-reverify")

    async def _retry_verify(self, ws: Socket, delay: float = 30.0) -> None:
        await asyncio.sleep(delay)
        if not ws.closed and ws is not self._ws:
            await self._send_verify(ws)
