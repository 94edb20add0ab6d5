"""The four ways a OneBot 11 implementation and the bot meet: reverse WS, forward WS, HTTP + POST, HTTP + SSE."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from functools import partial
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from adapters.fields import QQ_NUMBER
from adapters.frames import parse_frame
from adapters.link import FatalLinkError, Link, LinkError, LinkState, LinkStatus, Verdict
from adapters.listen import LOOPBACK, bearer_token, header, listen, listener_app, secret_matches
from adapters.onebot.base import OneBotBase
from adapters.sse import sse_data
from core.errors import AdapterError, NotConnectedError

HEARTBEAT = 30.0
DEFAULT_HEARTBEAT_MS = 15000  # the spec's default interval
# Heartbeat intervals outside this range (ms) are not believed: they would make the watchdog spin or sleep forever.
HEARTBEAT_RANGE_MS = (100, 3_600_000)
HTTP_TIMEOUT = 30.0


def token_refused(status: int) -> FatalLinkError:
    """The one line for an implementation that refuses our access token (retrying cannot fix it)."""
    return FatalLinkError(
        f"the OneBot implementation refused [onebot] access_token (HTTP {status}): "
        "set the same access_token here and in LLBot/NapCat"
    )


def _frames(kind: WSMsgType) -> bool:
    """Whether a WebSocket message of this type carries a frame (text arrives as bytes: `decode_text=False`)."""
    return kind in (WSMsgType.TEXT, WSMsgType.BINARY)


class OneBotReverse(OneBotBase):
    """The implementation dials the bot (any path); Universal sockets, or separate API and Event ones.

    A reconnecting implementation's new socket replaces the old one for sending at once. The
    listener's status is UP while a socket that carries actions is connected.
    """

    mode = "reverse-ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._api: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.listener: LinkStatus | None = None

    async def start(self) -> None:
        host, port = self.settings.reverse_ws_host, self.settings.reverse_ws_port
        app = listener_app()
        app.router.add_get("/{tail:.*}", self._accept)
        self._runner, self.port = await listen(app, host, port)
        self.listener = self.listener_status(f"OneBot reverse-ws on {host}:{self.port}")
        self.log.info("waiting for the OneBot implementation on ws://{}:{}/ (reverse-ws)", host, self.port)
        self._warn_if_exposed(host, "the OneBot reverse-ws listener")

    async def stop(self) -> None:
        self.stopping = True
        self._link_down()
        if self._api is not None:
            await self._api.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._pending.fail_all()
        await super().stop()

    def _refusal_status(self, request: web.Request) -> int | None:
        """401 without a token, 403 with a wrong one, None when the connection may proceed."""
        if not self.token:
            return None
        given = bearer_token(request, "access_token")
        if not given:
            return 401
        return None if secret_matches(given, self.token) else 403

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal_status(request)
        if refused is not None:
            self.log.warning("refused a OneBot connection from {}: wrong or missing access_token", request.remote)
            return web.Response(status=refused)
        role = request.headers.get("X-Client-Role", "Universal").lower()
        announced = request.headers.get("X-Self-ID", "")
        if not self.self_id and QQ_NUMBER.fullmatch(announced):
            self.self_id = announced
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, **self.ws_options)
        await ws.prepare(request)
        assert self.listener is not None
        if role in ("universal", "api"):
            old, self._api = self._api, ws
            if old is not None and not old.closed:
                await old.close()
            self.log.info("OneBot implementation connected ({} socket) from {}", role, request.remote)
            self.listener.set(LinkState.UP)
            self._link_up()
            self.tasks.spawn(self._login(), name=f"{self.instance}-login")
        try:
            async for msg in ws:
                if _frames(msg.type):
                    await self.receive(msg.data, self._on_frame, self.listener)
        finally:
            if self._api is ws:
                self._api = None
                self._link_down()
                self._pending.fail_all()
                self.listener.set(LinkState.LISTENING)
                if not self.stopping:
                    self.log.warning("OneBot implementation disconnected; waiting for it to reconnect")
        return ws

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        ws = self._api
        if ws is None or ws.closed:
            raise NotConnectedError("the OneBot implementation is not connected")
        echo = self._pending.next_key()
        frame = json.dumps({"action": action, "params": params, "echo": echo}, ensure_ascii=False)
        response = await self._pending.request(echo, action, partial(ws.send_str, frame))
        return response if isinstance(response, dict) else {}


class OneBotForward(OneBotBase):
    """The bot dials `ws_url` as a `Link`; no frame for 3× the heartbeat interval means a dead link.

    A refused access token (401/403 at the upgrade) stops the link with one line; anything else is
    retried with backoff.
    """

    mode = "forward-ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._silence_limit = 3 * DEFAULT_HEARTBEAT_MS / 1000
        self.link = Link(f"OneBot forward-ws to {self.settings.ws_url}", self._connect_once, self.log)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.supervise(self.link)
        self.log.info("connecting to the OneBot implementation at {} (forward-ws)", self.settings.ws_url)

    async def stop(self) -> None:
        self.link.stop()
        self.stopping = True
        self._link_down()
        if self._ws is not None:
            await self._ws.close()
        self._pending.fail_all()
        await super().stop()
        if self._session is not None:
            await self._session.close()

    def _on_meta(self, event: dict[str, Any]) -> None:
        interval = event.get("interval")
        if (
            event.get("meta_event_type") == "heartbeat"
            and isinstance(interval, int | float)
            and not isinstance(interval, bool)
            and HEARTBEAT_RANGE_MS[0] <= interval <= HEARTBEAT_RANGE_MS[1]
        ):
            self._silence_limit = 3 * interval / 1000

    async def _connect_once(self, link: Link) -> str:
        """One connection: frames until it closes or falls silent; raises what `classify` sorts."""
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.ws_connect(
                self.settings.ws_url,
                headers=headers,
                heartbeat=HEARTBEAT,
                **self.ws_options,
            ) as ws:
                self._ws = ws
                try:
                    self.log.info("connected to the OneBot implementation at {}", self.settings.ws_url)
                    link.up()
                    self._link_up()
                    self.tasks.spawn(self._login(), name=f"{self.instance}-login")
                    return await self._read(ws, link.status)
                finally:
                    self._ws = None
                    self._link_down()
                    self._pending.fail_all()
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise token_refused(exc.status) from None
            raise

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[bool], status: LinkStatus) -> str:
        while True:
            try:
                msg = await ws.receive(timeout=self._silence_limit)
            except TimeoutError:
                await ws.close()
                return f"no heartbeat for {self._silence_limit:.0f}s"
            if _frames(msg.type):
                await self.receive(msg.data, self._on_frame, status)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return f"closed ({ws.close_code})"

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        ws = self._ws
        if ws is None or ws.closed:
            raise NotConnectedError("the OneBot implementation is not connected")
        echo = self._pending.next_key()
        frame = json.dumps({"action": action, "params": params, "echo": echo}, ensure_ascii=False)
        response = await self._pending.request(echo, action, partial(ws.send_str, frame))
        return response if isinstance(response, dict) else {}


class OneBotHttp(OneBotBase):
    """Actions over the HTTP API; events from the bot's webhook (HTTP POST) or LLBot's SSE stream.

    Webhook requests are answered 204 at once (replies go out as actions, never as a quick
    operation, so a slow model never holds the request); `X-Signature` is checked when `secret` is set.
    In http-post mode a `Link` watches the HTTP API: it is up while get_login_info answers, and
    comes back through the backoff after a request finds the API unreachable. In http-sse mode the
    event stream is the `Link`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "http-post" if self.settings.http_post_port else "http-sse"
        self.http_url = self.settings.http_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._stream: aiohttp.ClientResponse | None = None
        self._api_lost = asyncio.Event()
        self.port: int | None = None
        self.listener: LinkStatus | None = None
        if self.mode == "http-post":
            self.link = Link(
                f"OneBot HTTP API at {self.http_url}", self._probe_once, self.log, on_verdict=self._probe_verdict
            )
        else:
            self.link = Link(f"OneBot event stream at {self.http_url}/_events", self._sse_once, self.log)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        if self.mode == "http-post":
            await self._listen()
        self.supervise(self.link)

    async def stop(self) -> None:
        self.link.stop()
        self.stopping = True
        self._link_down()
        self._api_lost.set()
        await super().stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """POST /<action>; raises NotConnectedError, FatalLinkError for a refused token, AdapterError."""
        assert self._session is not None
        try:
            async with self._session.post(
                f"{self.http_url}/{action}",
                json=params,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
            ) as response:
                if response.status in (401, 403):
                    raise token_refused(response.status)
                body = await _read_capped(response, self.max_frame)
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            self._lost(type(exc).__name__)
            raise NotConnectedError(f"OneBot HTTP API unreachable: {type(exc).__name__}") from None
        frame = parse_frame(self.log, body, self.max_frame) if body is not None else None
        if frame is None:
            raise AdapterError(f"{action}: the answer is not a JSON object (HTTP {response.status})")
        return frame

    def _lost(self, reason: str) -> None:
        """The HTTP API stopped answering: queue replies until its link is back."""
        if self.connected:
            self.log.warning("OneBot HTTP API at {} unreachable ({}); replies are queued", self.http_url, reason)
            self._link_down()
        self._api_lost.set()
        if self._stream is not None:
            self._stream.close()  # the stream's link reconnects, and marks the API usable again

    async def _probe_once(self, link: Link) -> str:
        """Up once get_login_info answers; then wait until a request finds the API unreachable."""
        self._api_lost.clear()
        try:
            info = await self.call("get_login_info")
        except LinkError:
            raise
        except AdapterError as exc:
            raise LinkError(str(exc)) from None
        self._learn_login(info)
        self.log.info("OneBot HTTP API at {} is answering (account {})", self.http_url, self.self_id)
        link.up()
        self._link_up()
        await self._api_lost.wait()
        return "the HTTP API stopped answering"

    def _probe_verdict(self, verdict: Verdict) -> None:
        # Events without a way to answer them are no platform: with the API refused for good the
        # webhook stops counting too, so that a bot with only this platform exits instead of idling.
        if verdict is Verdict.FATAL and self.listener is not None:
            self.listener.set(LinkState.STOPPED, "the OneBot HTTP API refused the bot")

    async def _listen(self) -> None:
        host, port = self.settings.http_post_host, self.settings.http_post_port
        app = listener_app(self.max_body)
        app.router.add_post("/{tail:.*}", self._webhook)
        self._runner, self.port = await listen(app, host, port)
        self.listener = self.listener_status(f"OneBot webhook on {host}:{self.port}")
        self.log.info("receiving OneBot events on http://{}:{}/ (http-post)", host, self.port)
        if host not in LOOPBACK and not self.settings.secret.get_secret_value():
            self.log.warning(
                "SECURITY: the OneBot webhook listens on {} without [onebot] secret; events are not signed", host
            )

    async def _webhook(self, request: web.Request) -> web.Response:
        secret = self.settings.secret.get_secret_value()
        given = header(request, "X-Signature")  # raw bytes: any byte compares, none raises
        if secret and not given:  # refused before its body is read: nobody unsigned makes the bot buffer
            self.log.warning("refused a OneBot event from {}: no X-Signature (check [onebot] secret)", request.remote)
            return web.Response(status=401)
        body = await request.read()  # the listener caps it (413 past max_body)
        if secret:
            expected = b"sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest().encode()
            if not hmac.compare_digest(given, expected):
                self.log.warning(
                    "refused a OneBot event from {}: bad X-Signature (check [onebot] secret)", request.remote
                )
                return web.Response(status=401 if not given else 403)
        frame = parse_frame(self.log, body, self.max_body)
        if frame is None:
            return web.Response(status=400)
        if self.listener is not None:
            self.listener.last_event = time.time()
        self.tasks.spawn(self.guarded(frame, self._on_frame), name=f"{self.instance}-event")
        return web.Response(status=204)

    async def _sse_once(self, link: Link) -> str:
        """GET {http_url}/_events (LLBot): one event per SSE message, until the stream ends."""
        assert self._session is not None
        async with self._session.get(
            f"{self.http_url}/_events",
            headers={**self._headers(), "Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=90),
        ) as response:
            if response.status in (401, 403):
                raise token_refused(response.status)
            if response.status != 200:
                raise LinkError(f"HTTP {response.status}")
            self.log.info("following OneBot events at {}/_events (http-sse)", self.http_url)
            self._stream = response
            try:
                link.up()
                self._link_up()
                self.tasks.spawn(self._login(), name=f"{self.instance}-login")
                async for data in sse_data(response.content, self.max_body, self.log):
                    await self.receive(data, self._on_frame, link.status, self.max_body)
            finally:
                self._stream = None
                self._link_down()
            return "stream ended"


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it is longer than `limit` (it is not read past that)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
