"""mirai-api-http's reverse-ws adapter: the bot listens, mirai-api-http dials in, the bot verifies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from adapters.link import LinkState, LinkStatus
from adapters.listen import LOOPBACK, bearer_token, listen, listener_app, secret_matches
from adapters.mirai.base import HEARTBEAT, MiraiBase, Socket

VERIFY_SYNC_ID = "1"
EXAMPLE_VERIFY_KEY = "1234567890"
# config.example.toml's reverse_ws_token: whoever has read the example knows it.
EXAMPLE_REVERSE_WS_TOKEN = "change-me-to-random-letters"
REVERIFY_DELAY = 30.0


class MiraiReverse(MiraiBase):
    """Listens on reverse_ws_host:reverse_ws_port (any path).

    The first frame is ours: `verify` with verifyKey and qq. A refusal is the bare
    `{"code":1}`; mirai-api-http keeps the socket open, so verify is asked again later.
    The listener's status is UP while a verified socket is connected, LISTENING otherwise.
    """

    mode = "reverse-ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.listener: LinkStatus | None = None
        self._reverifying: set[Socket] = set()  # sockets with a verify retry already scheduled

    async def start(self) -> None:
        """Listen for mirai-api-http; returns without waiting for it."""
        host, port = self.settings.reverse_ws_host, self.settings.reverse_ws_port
        app = listener_app()
        app.router.add_get("/{tail:.*}", self._accept)
        self._runner, self.port = await listen(app, host, port)
        self.listener = self.listener_status(f"mirai-api-http reverse-ws on {host}:{self.port}")
        self.log.info("waiting for mirai-api-http on ws://{}:{}/ (reverse-ws)", host, self.port)
        self._warn_if_exposed(host)

    def _warn_if_exposed(self, host: str) -> None:
        if host in LOOPBACK:
            return
        token = self.settings.reverse_ws_token
        if not token or token == EXAMPLE_REVERSE_WS_TOKEN:
            self.log.warning(
                "SECURITY: listening on {} {}: anyone who can reach this port receives the verifyKey and can "
                "feed the bot messages. Set [mirai] reverse_ws_token to a random string and add it to "
                "mirai-api-http's extraHeaders (Authorization: Bearer <token>), or firewall the port.",
                host,
                "with the example [mirai] reverse_ws_token" if token else "without [mirai] reverse_ws_token",
            )
        if self.settings.api_key.get_secret_value() == EXAMPLE_VERIFY_KEY:
            self.log.warning("SECURITY: [mirai] api_key is still the example value 1234567890; change it on both sides")

    async def stop(self) -> None:
        """Close the socket and the listener."""
        await super().stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def _on_verified(self, up: bool) -> None:
        if self.listener is not None:
            self.listener.set(LinkState.UP if up else LinkState.LISTENING)

    def _refusal_status(self, request: web.Request) -> int | None:
        """401 without a token, 403 with a wrong one, None when the connection may proceed."""
        token = self.settings.reverse_ws_token
        if not token:
            return None
        given = bearer_token(request, "token")
        if not given:
            return 401
        return None if secret_matches(given, token) else 403

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal_status(request)
        if refused is not None:
            self.log.warning("refused a connection from {}: wrong or missing reverse_ws_token", request.remote)
            return web.Response(status=refused, text="unauthorized")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, **self.ws_options)
        await ws.prepare(request)
        self.log.info("mirai-api-http connected from {}, verifying", request.remote)
        try:
            await self._send_verify(ws)
            assert self.listener is not None
            await self._receive(ws, self.listener)
        finally:
            if self._deactivate(ws) and not self.stopping:
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
        session = data.get("session")
        if data.get("code") == 0:
            await self._activate(ws, session if isinstance(session, str) else "")
            return
        self.log.error("mirai-api-http refused verify: {}", self._refusal(data.get("code"), data.get("msg")))
        # mirai-api-http keeps the socket open after a refusal; ask again later in case the bot
        # account logs in meanwhile, without flooding the log.
        if ws not in self._reverifying:
            self._reverifying.add(ws)
            self.tasks.spawn(self._retry_verify(ws), name=f"{self.instance}-reverify")

    async def _retry_verify(self, ws: Socket, delay: float = REVERIFY_DELAY) -> None:
        try:
            await asyncio.sleep(delay)
            if not ws.closed and ws is not self._ws:
                with contextlib.suppress(ConnectionError, RuntimeError):  # it closed meanwhile
                    await self._send_verify(ws)
        finally:
            self._reverifying.discard(ws)
