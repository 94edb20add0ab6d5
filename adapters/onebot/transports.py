"""The four ways a OneBot 11 implementation and the bot meet: reverse WS, forward WS, HTTP + POST, HTTP + SSE."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from adapters.base import parse_frame
from adapters.link import keep_connected
from adapters.listen import listen
from adapters.onebot.base import OneBotBase, token_matches
from adapters.sse import sse_data
from core.backoff import Backoff
from core.errors import AdapterError, NotConnectedError

MAX_FRAME = 16 * 1024 * 1024
HEARTBEAT = 30.0
DEFAULT_HEARTBEAT_MS = 15000  # the spec's default interval
_TOKEN_HINT = " (check [onebot] access_token)"


async def _dispatch(adapter: OneBotBase, frame: dict[str, Any]) -> None:
    if adapter._on_response(frame):
        return
    if "post_type" in frame:
        try:
            await adapter._on_event(frame)
        except Exception:
            adapter.log.exception("dropped an event that could not be handled")
    elif frame.get("status") == "failed":
        adapter.log.warning("OneBot refused something: retcode {} {}", frame.get("retcode"), frame.get("wording", ""))


class OneBotReverse(OneBotBase):
    """The implementation dials the bot (any path); Universal sockets, or separate API and Event ones.

    A reconnecting implementation's new socket replaces the old one for sending at once.
    """

    mode = "reverse-ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._api: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        host, port = self.settings.reverse_ws_host, self.settings.reverse_ws_port
        app = web.Application(client_max_size=MAX_FRAME)
        app.router.add_get("/{tail:.*}", self._accept)
        self._runner, self.port = await listen(app, host, port)
        self.log.info("waiting for the OneBot implementation on ws://{}:{}/ (reverse-ws)", host, self.port)
        self._warn_if_exposed(host, "the OneBot reverse-ws listener")

    async def stop(self) -> None:
        self._stopping = True
        self._link_down()
        if self._api is not None:
            await self._api.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._fail_pending()
        await super().stop()

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if self.token and not token_matches(
            self.token, request.headers.get("Authorization", ""), request.query.get("access_token", "")
        ):
            self.log.warning("refused a OneBot connection from {}: wrong or missing access_token", request.remote)
            return web.Response(status=401 if "Authorization" not in request.headers else 403)
        role = request.headers.get("X-Client-Role", "Universal").lower()
        if request.headers.get("X-Self-ID", "").isdigit():
            self.self_id = self.self_id or request.headers["X-Self-ID"]
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        if role in ("universal", "api"):
            old, self._api = self._api, ws
            if old is not None and not old.closed:
                await old.close()
            self.log.info("OneBot implementation connected ({} socket) from {}", role, request.remote)
            self._link_up()
            self.tasks.spawn(self._login(), name=f"{self.instance}-login")
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    frame = parse_frame(self.log, msg.data)
                    if frame is not None:
                        await _dispatch(self, frame)
        finally:
            if self._api is ws:
                self._api = None
                self._link_down()
                self._fail_pending()
                if not self._stopping:
                    self.log.warning("OneBot implementation disconnected; waiting for it to reconnect")
        return ws

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        ws = self._api
        if ws is None or ws.closed:
            raise NotConnectedError("the OneBot implementation is not connected")
        echo = self._next_echo()
        frame = json.dumps({"action": action, "params": params, "echo": echo}, ensure_ascii=False)
        return await self._await_echo(echo, lambda: ws.send_str(frame))


class OneBotForward(OneBotBase):
    """The bot dials `ws_url`; reconnects forever. No frame for 3× the heartbeat interval means a dead link."""

    mode = "forward-ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._silence_limit = 3 * DEFAULT_HEARTBEAT_MS / 1000

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.tasks.spawn(self._run(), name=f"{self.instance}-link")
        self.log.info("connecting to the OneBot implementation at {} (forward-ws)", self.settings.ws_url)

    async def stop(self) -> None:
        self._stopping = True
        self._link_down()
        if self._ws is not None:
            await self._ws.close()
        self._fail_pending()
        await super().stop()
        if self._session is not None:
            await self._session.close()

    def _on_meta(self, event: dict[str, Any]) -> None:
        interval = event.get("interval")
        if event.get("meta_event_type") == "heartbeat" and isinstance(interval, int | float) and interval > 0:
            self._silence_limit = 3 * interval / 1000

    async def _run(self) -> None:
        what = f"OneBot link to {self.settings.ws_url}"
        await keep_connected(what, self._connect_once, lambda: self._stopping, self.log)

    async def _connect_once(self) -> tuple[bool, str]:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.ws_connect(
                self.settings.ws_url, headers=headers, heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME
            ) as ws:
                self._ws = ws
                self.log.info("connected to the OneBot implementation at {}", self.settings.ws_url)
                self._link_up()
                self.tasks.spawn(self._login(), name=f"{self.instance}-login")
                return True, await self._receive(ws)
        except aiohttp.WSServerHandshakeError as exc:
            return False, f"refused with HTTP {exc.status}{_TOKEN_HINT if exc.status in (401, 403) else ''}"
        finally:
            if self._ws is not None:
                self._ws = None
                self._link_down()
                self._fail_pending()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        while True:
            try:
                msg = await ws.receive(timeout=self._silence_limit)
            except TimeoutError:
                await ws.close()
                return f"no heartbeat for {self._silence_limit:.0f}s"
            if msg.type is WSMsgType.TEXT:
                frame = parse_frame(self.log, msg.data)
                if frame is not None:
                    await _dispatch(self, frame)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return f"closed ({ws.close_code})"

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        ws = self._ws
        if ws is None or ws.closed:
            raise NotConnectedError("the OneBot implementation is not connected")
        echo = self._next_echo()
        frame = json.dumps({"action": action, "params": params, "echo": echo}, ensure_ascii=False)
        return await self._await_echo(echo, lambda: ws.send_str(frame))


class OneBotHttp(OneBotBase):
    """Actions over the HTTP API; events from the bot's webhook (HTTP POST) or LLBot's SSE stream.

    Webhook requests are answered 204 at once (replies go out as actions, never as a quick
    operation, so a slow model never holds the request); `X-Signature` is checked when `secret` is set.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "http-post" if self.settings.http_post_port else "http-sse"
        self.http_url = self.settings.http_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._probing = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        if self.mode == "http-post":
            await self._listen()
            self.tasks.spawn(self._probe(), name=f"{self.instance}-probe")
        else:
            self.tasks.spawn(self._follow_sse(), name=f"{self.instance}-sse")

    async def stop(self) -> None:
        self._stopping = True
        self._link_down()
        await super().stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        try:
            async with self._session.post(
                f"{self.http_url}/{action}",
                json=params,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                if response.status in (401, 403):
                    raise AdapterError(f"{action}: HTTP {response.status} (check [onebot] access_token)")
                body = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            self._lost(type(exc).__name__)
            raise NotConnectedError(f"OneBot HTTP API unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise AdapterError(f"{action}: the answer is not JSON") from None
        return body if isinstance(body, dict) else {}

    def _lost(self, reason: str) -> None:
        """The HTTP API stopped answering: queue replies and probe until it is back."""
        if self.connected:
            self.log.warning("OneBot HTTP API at {} unreachable ({}); replies are queued", self.http_url, reason)
            self._link_down()
        if not self._probing and not self._stopping and self.mode == "http-post":
            self.tasks.spawn(self._probe(), name=f"{self.instance}-probe")

    async def _probe(self) -> None:
        """get_login_info with backoff until the HTTP API answers, then mark the link up (flushing the outbox)."""
        self._probing = True
        backoff = Backoff(min_delay=1.0, max_delay=30.0)
        try:
            while not self._stopping:
                try:
                    info = await self.call("get_login_info")
                except AdapterError:
                    await asyncio.sleep(backoff.next_delay())
                    continue
                if isinstance(info, dict) and info.get("user_id"):
                    self.self_id = self.self_id or str(info["user_id"])
                    self.nickname = str(info.get("nickname") or self.nickname)
                self.log.info("OneBot HTTP API at {} is answering (account {})", self.http_url, self.self_id)
                self._link_up()
                return
        finally:
            self._probing = False

    async def _listen(self) -> None:
        host, port = self.settings.http_post_host, self.settings.http_post_port
        app = web.Application(client_max_size=MAX_FRAME)
        app.router.add_post("/{tail:.*}", self._webhook)
        self._runner, self.port = await listen(app, host, port)
        self.log.info("receiving OneBot events on http://{}:{}/ (http-post)", host, self.port)
        if host not in ("127.0.0.1", "localhost", "::1") and not self.settings.secret.get_secret_value():
            self.log.warning(
                "SECURITY: the OneBot webhook listens on {} without [onebot] secret; events are not signed", host
            )

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self.settings.secret.get_secret_value()
        if secret:
            expected = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Signature", "").encode(), expected.encode()):
                self.log.warning(
                    "refused a OneBot event from {}: bad X-Signature (check [onebot] secret)", request.remote
                )
                return web.Response(status=403)
        frame = parse_frame(self.log, body.decode("utf-8", errors="replace"))
        if frame is not None:
            self.tasks.spawn(_dispatch(self, frame), name=f"{self.instance}-event")
        return web.Response(status=204)

    async def _follow_sse(self) -> None:
        """GET {http_url}/_events (LLBot): one event per SSE message; reconnect when it drops."""
        what = f"OneBot event stream at {self.http_url}/_events"
        await keep_connected(what, self._sse_once, lambda: self._stopping, self.log)

    async def _sse_once(self) -> tuple[bool, str]:
        assert self._session is not None
        try:
            async with self._session.get(
                f"{self.http_url}/_events",
                headers={**self._headers(), "Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=90),
            ) as response:
                if response.status != 200:
                    return False, f"HTTP {response.status}{_TOKEN_HINT if response.status in (401, 403) else ''}"
                self.log.info("following OneBot events at {}/_events (http-sse)", self.http_url)
                self._link_up()
                self.tasks.spawn(self._login(), name=f"{self.instance}-login")
                async for data in sse_data(response.content):
                    frame = parse_frame(self.log, data)
                    if frame is not None:
                        await _dispatch(self, frame)
                return True, "stream ended"
        finally:
            self._link_down()
