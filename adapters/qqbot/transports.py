"""How official QQ bot events arrive: gateway shards (each a supervised Link) or the signed webhook."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType, web

from adapters.frames import parse_frame
from adapters.link import FatalLinkError, Link, LinkError, LinkState, ReidentifyLink, ResumeLink, Verdict
from adapters.listen import header, listen, listener_app
from adapters.qqbot import codec
from adapters.qqbot.signing import fresh, key_from_secret, validation_answer, verify
from core.backoff import Backoff
from core.errors import ActionFailedError, NotConnectedError

if TYPE_CHECKING:
    from adapters.qqbot.adapter import QQBotAdapter

GROUP_AND_C2C_EVENT = 1 << 25
CONNECT_TIMEOUT = 20.0
HELLO_TIMEOUT = 15.0
RESUME_CODES = frozenset({4008, 4009})
REIDENTIFY_CODES = frozenset({4006, 4007, 9001, 9005, *range(4900, 4914)})
TOKEN_REFUSED = 4004
# The platform will not take this bot as configured: retrying cannot help, the user must act.
FATAL_CODES: dict[int, str] = {
    4001: "invalid opcode (a bug in this bot; please report it)",
    4002: "invalid payload (a bug in this bot; please report it)",
    4010: "invalid shard: check [qqbot] shards and shard_index",
    4011: "too many guilds for one connection: raise [qqbot] shards",
    4012: "invalid gateway version (a bug in this bot; please report it)",
    4013: "invalid intent (a bug in this bot; please report it)",
    4014: "the bot may not receive group and C2C events: check its permissions on q.qq.com",
    4914: "the bot is delisted and may only use the sandbox: set [qqbot] sandbox = true or relist it on q.qq.com",
    4915: "the bot is banned: check its status on q.qq.com",
}


class GatewayShard:
    """One gateway connection as a Link: token, /gateway/bot, Hello, Identify or Resume, heartbeats
    with an ACK watchdog, dispatches. What a close means is decided by `classify` through the
    exception raised; `on_verdict` keeps the session for a resume or forgets it."""

    def __init__(self, adapter: QQBotAdapter, index: int, backoff: Backoff, first_delay: float = 0.0) -> None:
        self.adapter = adapter
        self.index = index
        self.first_delay = first_delay  # shards must not all identify at once
        self.session_id = ""
        self.seq: int | None = None
        self._ending: LinkError | None = None
        self.link = Link(
            f"QQ gateway shard {index}", self.connect, adapter.log, backoff=backoff, on_verdict=self._after
        )

    def _after(self, verdict: Verdict) -> None:
        if verdict in (Verdict.REIDENTIFY, Verdict.FATAL):
            self.session_id, self.seq = "", None

    async def connect(self, link: Link) -> str:
        """One connection, from the token to the close. Raises LinkError (and its kinds) or network errors."""
        if self.first_delay:
            delay, self.first_delay = self.first_delay, 0.0
            await link.sleep(delay)
        adapter = self.adapter
        token = await adapter.token()  # FatalLinkError when the platform refuses appid/secret
        url = await self._gateway_url()
        session = adapter.http()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            ws = await session.ws_connect(url, **adapter.ws_options)
        self._ending = None
        try:
            hello = await self._hello(ws)
            await ws.send_json(self._login(token))
            acked = asyncio.Event()
            acked.set()
            beat = asyncio.create_task(self._heartbeat(ws, codec.heartbeat_seconds(hello), acked))

            async def handle(payload: dict[str, Any]) -> None:
                await self._on_payload(link, payload, acked)

            try:
                while self._ending is None:
                    msg = await ws.receive()
                    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        await adapter.receive(msg.data, handle, link.status)
                    elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
            finally:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)  # its failure, if any, is not left unread
        finally:
            adapter.shard_state(self.index, False)
            await ws.close()
        return self._after_close(ws.close_code)

    async def _gateway_url(self) -> str:
        try:
            gateway = await self.adapter.api("GET", "/gateway/bot")
        except (NotConnectedError, ActionFailedError) as exc:
            raise LinkError(f"/gateway/bot: {exc}") from None
        url = codec.text(codec.obj(gateway).get("url"))
        if not url.startswith(("ws://", "wss://")):
            raise LinkError("/gateway/bot gave no WebSocket URL")
        return url

    async def _hello(self, ws: aiohttp.ClientWebSocketResponse[Any]) -> dict[str, Any]:
        msg = await ws.receive(timeout=HELLO_TIMEOUT)
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            raise LinkError(f"closed ({ws.close_code}) before Hello")
        hello = parse_frame(self.adapter.log, msg.data, self.adapter.max_frame)
        if hello is None or hello.get("op") != 10:
            raise LinkError("the gateway did not start with Hello (op 10)")
        return hello

    def _login(self, token: str) -> dict[str, Any]:
        auth = f"QQBot {token}"
        if self.session_id and self.seq is not None:
            return {"op": 6, "d": {"token": auth, "session_id": self.session_id, "seq": self.seq}}
        shard = [self.index, self.adapter.settings.shards]
        return {"op": 2, "d": {"token": auth, "intents": GROUP_AND_C2C_EVENT, "shard": shard, "properties": {}}}

    async def _on_payload(self, link: Link, payload: dict[str, Any], acked: asyncio.Event) -> None:
        """One frame, inside the adapter's error boundary: it must not raise to end the connection,
        so the ops that end it set `_ending` and the receive loop stops."""
        op = payload.get("op")
        seq = codec.sequence(payload)
        if seq is not None:
            self.seq = seq
        if op == 11:
            acked.set()
        elif op == 7:
            self._ending = ResumeLink("the platform asked for a reconnect (op 7), resuming")
        elif op == 9:
            self._ending = ReidentifyLink("invalid session (op 9), identifying again")
        elif op == 0:
            kind = payload.get("t")
            if kind in ("READY", "RESUMED"):
                if kind == "READY":
                    self.session_id = codec.session_id(payload)
                self.adapter.log.info("QQ gateway shard {} {}", self.index, "ready" if kind == "READY" else "resumed")
                link.up()
                self.adapter.shard_state(self.index, True)
            else:
                await self.adapter.dispatch(payload)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse[Any], interval: float, acked: asyncio.Event) -> None:
        """Beat every `interval`; a beat not ACKed by the next one means the socket is dead."""
        while not ws.closed:
            await asyncio.sleep(interval)
            if not acked.is_set():
                self.adapter.log.warning("QQ gateway shard {}: no heartbeat ACK; reconnecting", self.index)
                self._ending = LinkError("no heartbeat ACK")
                await ws.close()
                return
            acked.clear()
            try:
                await ws.send_json({"op": 1, "d": self.seq})
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return  # the socket is closing: the receive loop sees it

    def _after_close(self, code: int | None) -> str:
        """What a close code means, as the exception `classify` reads (or a reason for a plain retry)."""
        if self._ending is not None:
            raise self._ending
        if code in FATAL_CODES:
            raise FatalLinkError(f"QQ gateway closed shard {self.index} with {code}: {FATAL_CODES[code]}")
        if code == TOKEN_REFUSED:
            self.adapter.forget_token()
            raise LinkError(f"closed ({code}): token refused, fetching a new one")
        if code in RESUME_CODES:
            raise ResumeLink(f"closed ({code}), resuming")
        if code in REIDENTIFY_CODES:
            raise ReidentifyLink(f"closed ({code}), identifying again")
        return f"closed ({code}), resuming" if self.session_id else f"closed ({code})"


class Webhook:
    """The callback endpoint: every request's Ed25519 signature and timestamp are checked before
    anything in it is read or answered, op 13 included."""

    def __init__(self, adapter: QQBotAdapter, clock: Callable[[], float] = time.time) -> None:
        self.adapter = adapter
        self.clock = clock  # tests move it to check the freshness window
        self.key = key_from_secret(adapter.secret)
        self.status = adapter.listener_status("QQ webhook")
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on `[qqbot] webhook_host`/`webhook_port` at `webhook_path`. Raises AdapterError."""
        settings = self.adapter.settings
        app = listener_app(self.adapter.max_body)
        app.router.add_post(settings.webhook_path, self.handle)
        self.runner, self.port = await listen(app, settings.webhook_host, settings.webhook_port)

    async def stop(self) -> None:
        """Stop listening."""
        self.status.set(LinkState.DOWN, "stopped")
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        """One callback: 401 unless signed and fresh, 400 unless a JSON object, else op 13's answer or op 12."""
        adapter = self.adapter
        signature = header(request, "X-Signature-Ed25519")
        timestamp = header(request, "X-Signature-Timestamp")
        body = await request.read()  # capped by listener_app before it is read
        if not verify(self.key, signature, timestamp, body):
            adapter.log.warning("refused a QQ webhook call from {}: bad or missing signature", request.remote)
            return web.Response(status=401)
        if not fresh(timestamp, self.clock()):
            adapter.log.warning("refused a QQ webhook call from {}: its timestamp is too old or new", request.remote)
            return web.Response(status=401)
        payload = parse_frame(adapter.log, body, adapter.max_body)
        if payload is None:
            return web.Response(status=400)
        self.status.last_event = time.time()
        op = payload.get("op")
        if op == 13:
            check = codec.validation(payload)
            if check is None:
                return web.Response(status=400)
            return web.json_response(validation_answer(self.key, check.plain_token, check.event_ts))
        if op == 0:
            adapter.tasks.spawn(adapter.guarded(payload, adapter.dispatch), name=f"{adapter.instance}-event")
        return web.json_response({"op": 12})
