"""A fake Satori server (like LLOneBot's): the `/v1/{resource}.{method}` HTTP API and `/v1/events` WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import html
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

Json = dict[str, Any]

OP_EVENT, OP_PING, OP_PONG, OP_IDENTIFY, OP_READY = 0, 1, 2, 3, 4
CLOSE_INVALID_MESSAGE = 4000  # the reference servers' code for a frame that is not JSON
CLOSE_INVALID_TOKEN = 4004
# The spec gives no code for a client that never identifies; the fake reuses "invalid message" for it.
CLOSE_IDENTIFY_TIMEOUT = 4000


_AUDIO = re.compile(r"<audio\s[^>]*?src=\"([^\"]*)\"")


def sent_voices(call: Json) -> list[bytes]:
    """The bytes of every `<audio>` element of a recorded message.create whose src is a base64 data: URI."""
    content = call["body"].get("content")
    sources = [html.unescape(src) for src in _AUDIO.findall(content if isinstance(content, str) else "")]
    return [base64.b64decode(src.split(",", 1)[1]) for src in sources if src.startswith("data:") and "," in src]


def sent_audio_types(call: Json) -> list[str]:
    """The MIME type of every `<audio>` data: URI of a recorded message.create."""
    content = call["body"].get("content")
    sources = [html.unescape(src) for src in _AUDIO.findall(content if isinstance(content, str) else "")]
    return [src[5:].split(";", 1)[0] for src in sources if src.startswith("data:")]


def audio_element(src: str) -> str:
    """A received voice as LLOneBot writes it in message content."""
    return f'<audio src="{html.escape(src, quote=True)}"/>'


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)


@dataclass(eq=False)
class _Conn:
    """One event socket; it gets events only once it has identified."""

    ws: web.WebSocketResponse
    request: web.Request
    identified: bool = False


class FakeSatori:
    """Behaves like a Satori server (LLOneBot / Chronocat) as the bot sees it, on 127.0.0.1.

    HTTP: `POST /v1/{resource}.{method}` checks `Authorization: Bearer <token>` (401 missing, 403 wrong) and
    `Satori-Platform` + `Satori-User-ID` (or the older `X-Platform` / `X-Self-ID`; 403 `login not found` on a
    mismatch); GET is 405 and an unknown method 404. Every call but `login.get` is recorded in `calls` as
    `{"api", "body"}`. `message.create` answers a one-message array, ids counting from 1000, and stores the
    message in `messages` (keyed by id) so `message.get` finds it; `fail_next` > 0 makes that many of them 500.
    The approve / delete calls answer 200 with an empty body, as LLOneBot's `res.json(undefined)` does.

    WebSocket `GET /v1/events`: the client must IDENTIFY (`{"op":3,"body":{"token","sn"?}}`) within
    `identify_timeout` seconds; a bad token closes with 4004, a frame that is not JSON with 4000. READY carries
    one Login; PING is answered with PONG (counted in `pings`); events go out as `{"op":0,"body":event}`.

    Every pushed event gets the next `sn` and is buffered (the newest `buffer_limit`); an IDENTIFY with `sn`
    first replays the buffered events with a larger sn (login-* events excepted, as the spec says), before any
    new event. `stop()` then `start()` listens on the same port again and keeps the buffer and the `sn` counter,
    like a restarting server that persists them; events pushed while stopped are buffered for the next resume.
    """

    def __init__(self, self_id: str, token: str = "", platform: str = "llonebot", legacy_events: bool = False) -> None:
        self.self_id = self_id
        self.token = token
        self.platform = platform
        self.legacy_events = legacy_events
        self.nickname = "小助手"
        self.calls: list[Json] = []
        self.messages: dict[str, Json] = {}
        self.fail_next = 0
        self.pings = 0
        self.identifies: list[Json] = []
        self.identify_timeout = 10.0
        self.buffer_limit = 1000
        self.refused = 0
        # How a wrong token is closed: the spec's 4004, or Chronocat's / satori-python's 3000 "Unauthorized".
        self.token_close: tuple[int, bytes] = (CLOSE_INVALID_TOKEN, b"invalid token")
        self.accepted = 0  # event sockets accepted so far (a reconnect makes it grow)
        # What READY's body is instead of the real one (any JSON value), to try the client on a broken READY.
        self.ready_body: Any = None
        # HTTP statuses to answer the next /v1/events requests with instead of upgrading, one each.
        self.upgrade_failures: list[int] = []
        self.refuse_upgrade: int | None = None  # answer every /v1/events request with this status
        self.port = 0
        self._sn = 0
        self._buffer: list[Json] = []
        self._conns: list[_Conn] = []
        # Held while an identify is answered (READY + replay) and while an event is sent, so a replay is never
        # overtaken by a newer event.
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._message_ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, Callable[[Json], web.Response]] = {
            "message.create": self._message_create,
            "message.get": self._message_get,
            "message.delete": self._empty,
            "login.get": lambda body: web.json_response(self.login(), dumps=_dumps),
            "user.channel.create": self._channel_create,
            "friend.approve": self._approve,
            "guild.approve": self._approve,
            "guild.member.approve": self._approve,
        }

    # ---- state ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sn(self) -> int:
        """The sn of the last pushed event (0 before any)."""
        return self._sn

    @property
    def connections(self) -> int:
        """Identified event sockets that are open now."""
        return sum(1 for c in self._conns if c.identified and not c.ws.closed)

    def login(self) -> Json:
        return {
            "sn": 1,
            "platform": self.platform,
            "user": {"id": self.self_id, "name": self.nickname, "is_bot": True},
            "status": 1,
        }

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_calls(self, count: int, timeout: float = 5.0) -> list[Json]:
        """Wait until at least `count` API calls were recorded; returns all of them."""
        await self._wait(lambda: len(self.calls) >= count, timeout)
        return list(self.calls)

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least `count` event sockets have identified (READY and any replay already sent)."""
        await self._wait(lambda: self.connections >= count, timeout)

    async def wait_identifies(self, count: int, timeout: float = 5.0) -> list[Json]:
        """Wait until at least `count` IDENTIFY frames arrived in total; returns their bodies."""
        await self._wait(lambda: len(self.identifies) >= count, timeout)
        return list(self.identifies)

    # ---- events -----------------------------------------------------------------------------------------------

    def _event(self, kind: str) -> Json:
        # sn (and the legacy `id`) are placeholders: `push` numbers the event when it is sent.
        if self.legacy_events:
            # Older LLOneBot: `id` = sn and top-level self_id + platform, no `login`.
            return {
                "id": 0,
                "sn": 0,
                "type": kind,
                "self_id": self.self_id,
                "platform": self.platform,
                "timestamp": _now_ms(),
            }
        return {"sn": 0, "type": kind, "timestamp": _now_ms(), "login": self.login()}

    def message_event(
        self,
        channel_id: str,
        user_id: str,
        content: str,
        message_id: str,
        guild_id: str | None = None,
        name: str = "member",
    ) -> Json:
        """A message-created event: in a group when `guild_id` is given (LLOneBot: channel id = group number),
        else direct (channel id `private:<qq>`). The message is also stored for `message.get`."""
        event = self._event("message-created")
        created = _now_ms()
        event["channel"] = {"id": channel_id, "type": 1 if guild_id is None else 0}
        if guild_id is not None:
            event["guild"] = {"id": guild_id, "name": f"group {guild_id}"}
        event["user"] = {"id": user_id, "name": name}
        if guild_id is not None:
            event["member"] = {"nick": name}
        event["message"] = {"id": message_id, "content": content, "created_at": created}
        stored = {**event["message"], "channel": event["channel"], "user": event["user"]}
        if guild_id is not None:
            stored["guild"] = event["guild"]
        self.messages[message_id] = stored
        return event

    def friend_request(self, user_id: str, message_id: str, comment: str = "") -> Json:
        """A friend-request event; `message.id` is the handle `friend.approve` takes."""
        event = self._event("friend-request")
        event["user"] = {"id": user_id, "name": f"user {user_id}"}
        event["message"] = {"id": message_id, "content": comment}
        return event

    def guild_request(self, guild_id: str, user_id: str, message_id: str, comment: str = "") -> Json:
        """A guild-request event (the bot is invited into a group); `message.id` is for `guild.approve`."""
        event = self._event("guild-request")
        event["guild"] = {"id": guild_id, "name": f"group {guild_id}"}
        event["user"] = {"id": user_id, "name": f"user {user_id}"}
        event["message"] = {"id": message_id, "content": comment}
        return event

    async def push(self, event: Json) -> int:
        """Number `event` with the next sn, buffer it, send it to every identified socket; returns the sn."""
        async with self._send_lock:
            self._sn += 1
            event = {**event, "sn": self._sn}
            if "id" in event or self.legacy_events:
                event["id"] = self._sn
            self._buffer.append(event)
            del self._buffer[: -self.buffer_limit]
            text = _dumps({"op": OP_EVENT, "body": event})
            for conn in list(self._conns):
                if conn.identified:
                    await self._send(conn, text)
        return self._sn

    async def push_raw(self, frame: str | bytes, *, binary: bool = False) -> None:
        """Send `frame` exactly as given (even invalid UTF-8 in a text frame, no sn) to every identified socket."""
        data = frame.encode("utf-8", errors="surrogatepass") if isinstance(frame, str) else frame
        async with self._send_lock:
            for conn in list(self._conns):
                if conn.identified and not conn.ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await conn.ws.send_frame(data, WSMsgType.BINARY if binary else WSMsgType.TEXT)

    @staticmethod
    async def _send(conn: _Conn, text: str) -> None:
        if not conn.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(text)

    # ---- WebSocket --------------------------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_upgrade is not None or self.upgrade_failures:
            status = self.refuse_upgrade if self.refuse_upgrade is not None else self.upgrade_failures.pop(0)
            self.refused += 1
            return web.Response(status=status, text="<html>nope</html>", content_type="text/html")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = _Conn(ws, request)
        self.accepted += 1
        self._conns.append(conn)
        await self._notify()
        deadline = asyncio.get_running_loop().time() + self.identify_timeout
        try:
            while not ws.closed:
                if conn.identified:
                    msg = await ws.receive()
                else:
                    remaining = deadline - asyncio.get_running_loop().time()
                    try:
                        msg = await ws.receive(timeout=max(remaining, 0.001))
                    except TimeoutError:
                        await ws.close(code=CLOSE_IDENTIFY_TIMEOUT, message=b"identify timeout")
                        break
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._frame(conn, msg.data)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            await self._notify()
        return ws

    async def _frame(self, conn: _Conn, data: str | bytes) -> None:
        try:
            payload = json.loads(data)
        except ValueError:  # also bad UTF-8 in a binary frame
            await conn.ws.close(code=CLOSE_INVALID_MESSAGE, message=b"invalid message")
            return
        if not isinstance(payload, dict):
            return  # the reference servers read `payload.op` and so ignore anything that is not an object
        body = payload.get("body")
        body = body if isinstance(body, dict) else {}
        if payload.get("op") == OP_IDENTIFY:
            await self._identify(conn, body)
        elif payload.get("op") == OP_PING:
            self.pings += 1
            await self._send(conn, _dumps({"op": OP_PONG, "body": {}}))
            await self._notify()

    async def _identify(self, conn: _Conn, body: Json) -> None:
        self.identifies.append(body)
        await self._notify()
        if self.token and not (isinstance(body.get("token"), str) and hmac.compare_digest(body["token"], self.token)):
            await conn.ws.close(code=self.token_close[0], message=self.token_close[1])
            return
        resume = body.get("sn", body.get("sequence"))  # `sequence` is the pre-1.0 spelling
        if isinstance(resume, str) and resume.isdigit():
            resume = int(resume)
        async with self._send_lock:
            ready = {"logins": [self.login()], "proxy_urls": []} if self.ready_body is None else self.ready_body
            await self._send(conn, _dumps({"op": OP_READY, "body": ready}))
            if isinstance(resume, int) and not isinstance(resume, bool):
                for event in self._buffer:
                    if event["sn"] > resume and not str(event.get("type", "")).startswith("login-"):
                        await self._send(conn, _dumps({"op": OP_EVENT, "body": event}))
            conn.identified = True
        await self._notify()

    async def drop(self) -> None:
        """Kill every event socket abruptly, without a close frame (the client sees 1006), like a crash.

        The server keeps listening, so the client can reconnect and resume.
        """
        conns = list(self._conns)
        for conn in conns:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        with contextlib.suppress(TimeoutError):
            await self._wait(lambda: not any(c in self._conns for c in conns), 2.0)

    # ---- HTTP API ---------------------------------------------------------------------------------------------

    def _auth_refusal(self, request: web.Request) -> web.Response | None:
        if self.token:
            header = request.headers.get("Authorization")
            if header is None:
                return web.Response(status=401, text="missing token")
            scheme, _, given = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), self.token):
                return web.Response(status=403, text="invalid token")
        platform = request.headers.get("Satori-Platform", request.headers.get("X-Platform"))
        user_id = request.headers.get("Satori-User-ID", request.headers.get("X-Self-ID"))
        if platform != self.platform or user_id != self.self_id:
            return web.Response(status=403, text="login not found")
        return None

    async def _not_allowed(self, request: web.Request) -> web.Response:
        return web.Response(status=405, text="Please use POST method to send requests.")

    async def _api(self, request: web.Request) -> web.Response:
        refusal = self._auth_refusal(request)
        if refusal is not None:
            self.refused += 1
            return refusal
        name = request.match_info["name"]
        handler = self._handlers.get(name)
        if handler is None:
            return web.Response(status=404, text="method not found")
        body: Any = {}
        if request.body_exists:
            try:
                body = json.loads(await request.text())
            except ValueError:
                return web.Response(status=400, text="invalid json")
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid json")
        if name != "login.get":
            async with self._changed:
                self.calls.append({"api": name, "body": body})
                self._changed.notify_all()
        return handler(body)

    @staticmethod
    def _empty(body: Json) -> web.Response:
        return web.Response(status=200, content_type="application/json")

    def _message_create(self, body: Json) -> web.Response:
        channel_id, content = body.get("channel_id"), body.get("content")
        if not isinstance(channel_id, str) or not channel_id or not isinstance(content, str):
            return web.Response(status=400, text="bad request")
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=500, text="internal server error")
        message_id = str(next(self._message_ids))
        while message_id in self.messages:
            message_id = str(next(self._message_ids))
        message = {
            "id": message_id,
            "content": content,
            "channel": {"id": channel_id, "type": 1 if channel_id.startswith("private:") else 0},
            "user": {"id": self.self_id, "name": self.nickname},
            "created_at": _now_ms(),
        }
        self.messages[message_id] = message
        return web.json_response([message], dumps=_dumps)

    def _message_get(self, body: Json) -> web.Response:
        message = self.messages.get(str(body.get("message_id", "")))
        if message is None:
            return web.Response(status=404, text="message not found")
        return web.json_response(message, dumps=_dumps)

    @staticmethod
    def _channel_create(body: Json) -> web.Response:
        user_id = body.get("user_id")
        if not isinstance(user_id, str | int) or isinstance(user_id, bool) or not str(user_id):
            return web.Response(status=400, text="bad request")
        return web.json_response({"id": f"private:{user_id}", "type": 1})

    def _approve(self, body: Json) -> web.Response:
        if not isinstance(body.get("message_id"), str) or not body["message_id"]:
            return web.Response(status=400, text="bad request")
        return self._empty(body)

    # ---- lifetime ---------------------------------------------------------------------------------------------

    async def start(self, port: int | None = None) -> str:
        """Listen on 127.0.0.1 (on the previous port again after a stop); returns the base URL."""
        app = web.Application()
        app.router.add_get("/v1/events", self._events)
        app.router.add_get("/v1/events/", self._events)
        app.router.add_get("/v1/{name}", self._not_allowed)
        app.router.add_post("/v1/{name}", self._api)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        port = self.port if port is None else port
        await web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        return self.base_url

    async def stop(self) -> None:
        """Close every event socket with 1001 and stop listening; the buffer and the sn counter survive."""
        conns = list(self._conns)
        await asyncio.gather(
            *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping") for c in conns),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
