"""A fake OneBot 11 implementation (like NapCat / LLOneBot): reverse WS, forward WS, HTTP API + HTTP POST, SSE."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict

Response = dict[str, Any]

_SEND_ACTIONS = {
    "send_private_msg",
    "send_group_msg",
    "send_msg",
    "send_group_forward_msg",
    "send_private_forward_msg",
    "send_forward_msg",
}
_OK_NULL_ACTIONS = {"set_friend_add_request", "set_group_add_request", "delete_msg"}
_CQ_CODE = re.compile(r"\[CQ:([^,\]]+)((?:,[^\]]*)?)\]")


def ok(data: Any) -> Response:
    """A success response as NapCat / LLOneBot word it (empty message and wording)."""
    return {"status": "ok", "retcode": 0, "data": data, "message": "", "wording": ""}


def failed(retcode: int, wording: str) -> Response:
    """A failure response; LLOneBot puts the error text in both `message` and `wording`."""
    return {"status": "failed", "retcode": retcode, "data": None, "message": wording, "wording": wording}


def _escape(text: str, comma: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return text.replace(",", "&#44;") if comma else text


def _unescape(text: str) -> str:
    return text.replace("&#44;", ",").replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")


def to_cq(segments: list[dict[str, Any]]) -> str:
    """Render a segment array as a CQ string (the `raw_message` of an event)."""
    parts: list[str] = []
    for segment in segments:
        data = segment.get("data") or {}
        if segment.get("type") == "text":
            parts.append(_escape(str(data.get("text", ""))))
            continue
        params = "".join(f",{key}={_escape(str(value), comma=True)}" for key, value in data.items())
        parts.append(f"[CQ:{segment.get('type')}{params}]")
    return "".join(parts)


def parse_cq(text: str) -> list[dict[str, Any]]:
    """Parse a CQ string into a segment array (all data values stay strings, as in OneBot)."""
    segments: list[dict[str, Any]] = []
    position = 0
    for match in _CQ_CODE.finditer(text):
        if match.start() > position:
            segments.append({"type": "text", "data": {"text": _unescape(text[position : match.start()])}})
        data: dict[str, str] = {}
        for pair in filter(None, match.group(2).split(",")):
            key, _, value = pair.partition("=")
            data[key] = _unescape(value)
        segments.append({"type": match.group(1), "data": data})
        position = match.end()
    if position < len(text):
        segments.append({"type": "text", "data": {"text": _unescape(text[position:])}})
    return segments


def as_segments(message: Any) -> list[dict[str, Any]]:
    """A `message` param in any of its three shapes (CQ string, segment array, one segment) as an array."""
    if isinstance(message, str):
        return parse_cq(message)
    if isinstance(message, dict):
        return [message]
    return list(message) if isinstance(message, list) else []


def sent_text(action: dict[str, Any]) -> str:
    """The plain text of a recorded send action's `message` param."""
    segments = as_segments(action["params"].get("message"))
    return "".join(str((s.get("data") or {}).get("text", "")) for s in segments if s.get("type") == "text")


def sent_voices(action: dict[str, Any]) -> list[bytes]:
    """The bytes of every `record` segment of a recorded send action whose `file` is inline (`base64://`)."""
    files = [
        str((s.get("data") or {}).get("file", ""))
        for s in as_segments(action["params"].get("message"))
        if s.get("type") == "record"
    ]
    return [base64.b64decode(f.removeprefix("base64://")) for f in files if f.startswith("base64://")]


def record_segment(url: str, size: int = 0) -> dict[str, Any]:
    """A received voice as NapCat sends it: a file name, NapCat's local path, the download `url` and the size."""
    name = "5E8A0B2C7D3F4E1A9B6C.amr"
    return {
        "type": "record",
        "data": {
            "file": name,
            "path": f"/root/.config/QQ/nt_qq/nt_data/Ptt/{name}",
            "url": url,
            "file_size": str(size),
        },
    }


def _int(value: Any) -> int | None:
    """OneBot coerces string params (HTTP query and form values are always strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


@dataclass(eq=False)
class _Socket:
    """One WebSocket connection, from either side; `name` is e.g. "reverse/universal" or "forward/api"."""

    name: str
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse
    abort: Callable[[], None]
    events: bool
    actions: bool
    redial: Callable[[], Awaitable[None]] | None = None  # reverse links only
    reader: asyncio.Task[None] | None = None  # reverse links only: the task serving the socket
    heartbeat: asyncio.Task[None] | None = None
    dropped: bool = False


class FakeOneBot:
    """Behaves like a OneBot 11 implementation as the bot sees it, in all four connection modes at once.

    Every action except `get_login_info` is recorded in `actions` as `{"action", "params"}`. Sent messages get
    ids from 1000 up (skipping ids registered in `messages`) and are stored in `messages` so `get_msg` finds them.
    Events from `push` go to every event channel: reverse Universal/Event sockets, forward `/` and `/event`
    sockets, SSE streams, and `post_url` when set.
    """

    def __init__(self, self_id: int, access_token: str = "", nickname: str = "小助手") -> None:
        self.self_id = self_id
        self.access_token = access_token
        self.nickname = nickname
        self.actions: list[dict[str, Any]] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.forwards: dict[str, dict[str, Any]] = {}
        self.fail_next_action = 0
        self.heartbeat_interval: float | None = None
        self.mute_heartbeats = False
        self.reconnect_interval: float | None = None
        self.sse_ping_interval = 1.0
        self.post_url: str | None = None
        self.post_secret = ""
        self.post_timeout = 10.0
        self.post_replies: list[tuple[int, str]] = []
        self.quick_operations: list[dict[str, Any]] = []
        self.connections = 0
        self.refused = 0
        # When set, the forward WS upgrade, the SSE stream and the HTTP API answer this status with garbage.
        self.garbage_status: int | None = None
        self.forward_port = 0
        self.http_port = 0
        self._sockets: list[_Socket] = []
        self._sse: list[asyncio.Queue[bytes | None]] = []
        self._redials: set[asyncio.Task[None]] = set()
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._forward_runner: web.AppRunner | None = None
        self._http_runner: web.AppRunner | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Response]] = {
            "send_private_msg": lambda p: self._send(p, "private"),
            "send_group_msg": lambda p: self._send(p, "group"),
            "send_msg": lambda p: self._send(p, p.get("message_type") or ("group" if "group_id" in p else "private")),
            "send_group_forward_msg": lambda p: self._send_forward(p, "group"),
            "send_private_forward_msg": lambda p: self._send_forward(p, "private"),
            "send_forward_msg": lambda p: self._send_forward(
                p, p.get("message_type") or ("group" if "group_id" in p else "private")
            ),
            "get_login_info": lambda p: ok({"user_id": self.self_id, "nickname": self.nickname}),
            "get_msg": self._get_msg,
            "get_forward_msg": self._get_forward_msg,
            **{name: lambda p: ok(None) for name in _OK_NULL_ACTIONS},
        }

    # ---- state ------------------------------------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """The open channels: "reverse/universal|api|event", "forward/|api|event" and one "sse" per stream."""
        return [s.name for s in self._sockets if not s.ws.closed] + ["sse"] * len(self._sse)

    @property
    def connected(self) -> bool:
        return bool(self.channels)

    async def wait_channels(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait until at least `count` channels are open; returns them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.channels) >= count), timeout)
        return self.channels

    async def wait_connected(self, timeout: float = 5.0) -> None:
        await self.wait_channels(1, timeout)

    async def wait_actions(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `count` actions have arrived; returns all of them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.actions) >= count), timeout)
        return list(self.actions)

    def reset(self) -> None:
        """Forget recorded actions, replies and counters."""
        self.actions.clear()
        self.post_replies.clear()
        self.quick_operations.clear()
        self.connections = self.refused = self.fail_next_action = 0

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- actions ----------------------------------------------------------------------------------------------

    async def handle_action(self, action: str, params: dict[str, Any]) -> Response:
        """Answer one action the way NapCat / LLOneBot would (without echo)."""
        if action != "get_login_info":
            async with self._changed:
                self.actions.append({"action": action, "params": params})
                self._changed.notify_all()
        handler = self._handlers.get(action)
        if handler is None:
            return failed(1404, "不支持的API")
        if action in _SEND_ACTIONS and self.fail_next_action > 0:
            self.fail_next_action -= 1
            return failed(1200, "发送失败")
        return handler(params)

    def _next_message_id(self) -> int:
        message_id = next(self._message_ids)
        while message_id in self.messages:
            message_id = next(self._message_ids)
        return message_id

    def _send(self, params: dict[str, Any], message_type: str) -> Response:
        target_key = "group_id" if message_type == "group" else "user_id"
        target = _int(params.get(target_key))
        if message_type not in ("private", "group") or target is None or params.get("message") in (None, "", []):
            return failed(1400, "参数错误")
        message_id = self._next_message_id()
        self.messages[message_id] = {
            "time": int(time.time()),
            "message_type": message_type,
            "message_id": message_id,
            "real_id": message_id,
            "sender": {"user_id": self.self_id, "nickname": self.nickname},
            "message": as_segments(params["message"]),
            target_key: target,
        }
        return ok({"message_id": message_id})

    def _send_forward(self, params: dict[str, Any], message_type: str) -> Response:
        nodes = params.get("messages", params.get("message"))  # LLOneBot accepts `message` as an alias
        if not isinstance(nodes, list) or not nodes:
            return failed(1400, "参数错误")
        answer = self._send({**params, "message": nodes}, message_type)
        if answer["status"] != "ok":
            return answer
        forward_id = f"forward-{answer['data']['message_id']}"
        self.forwards[forward_id] = {"message": nodes}
        return ok({"message_id": answer["data"]["message_id"], "forward_id": forward_id})

    def _get_msg(self, params: dict[str, Any]) -> Response:
        message_id = _int(params.get("message_id"))
        if message_id is None:
            return failed(1400, "参数错误")
        message = self.messages.get(message_id)
        return ok(message) if message is not None else failed(1404, "消息不存在")

    def _get_forward_msg(self, params: dict[str, Any]) -> Response:
        forward_id = params.get("id", params.get("message_id"))
        forward = self.forwards.get(str(forward_id)) if forward_id is not None else None
        return ok(forward) if forward is not None else failed(1404, "消息不存在")

    async def _answer_frame(self, text: str) -> Response:
        try:
            frame = json.loads(text)
        except ValueError:
            return failed(1400, "json解析失败，请检查数据格式")
        if not isinstance(frame, dict) or not isinstance(frame.get("action"), str):
            return failed(1400, "参数错误")
        params = frame.get("params")
        answer = await self.handle_action(frame["action"], params if isinstance(params, dict) else {})
        if "echo" in frame:
            answer["echo"] = frame["echo"]
        return answer

    # ---- events -----------------------------------------------------------------------------------------------

    def _base(self, post_type: str) -> dict[str, Any]:
        return {"time": int(time.time()), "self_id": self.self_id, "post_type": post_type}

    def lifecycle_event(self, sub_type: str = "connect") -> dict[str, Any]:
        return {**self._base("meta_event"), "meta_event_type": "lifecycle", "sub_type": sub_type}

    def heartbeat_event(self, interval_ms: int) -> dict[str, Any]:
        return {
            **self._base("meta_event"),
            "meta_event_type": "heartbeat",
            "status": {"online": True, "good": True},
            "interval": interval_ms,
        }

    def _message_event(
        self, post_type: str, message_type: str, sub_type: str, message: str | list[dict[str, Any]], message_id: int
    ) -> dict[str, Any]:
        return {
            **self._base(post_type),
            "message_type": message_type,
            "sub_type": sub_type,
            "message_id": message_id,
            "real_id": message_id,
            "message": message,
            "raw_message": message if isinstance(message, str) else to_cq(message),
            "message_format": "string" if isinstance(message, str) else "array",
            "font": 14,
        }

    def private_message(
        self,
        user_id: int,
        message: str | list[dict[str, Any]],
        message_id: int,
        sub_type: str = "friend",
        nickname: str = "friend",
    ) -> dict[str, Any]:
        """A private message event (`message` as a CQ string or a segment array; sub_type "group" = temp chat)."""
        return {
            **self._message_event("message", "private", sub_type, message, message_id),
            "user_id": user_id,
            "target_id": self.self_id,
            "sender": {"user_id": user_id, "nickname": nickname, "sex": "unknown", "age": 0},
        }

    def group_message(
        self,
        group_id: int,
        user_id: int,
        message: str | list[dict[str, Any]],
        message_id: int,
        role: str = "member",
        card: str = "",
        nickname: str = "member",
    ) -> dict[str, Any]:
        """A group message event from a member with the given role (owner|admin|member) and group card."""
        return {
            **self._message_event("message", "group", "normal", message, message_id),
            "group_id": group_id,
            "user_id": user_id,
            "anonymous": None,
            "sender": {
                "user_id": user_id,
                "nickname": nickname,
                "card": card,
                "sex": "unknown",
                "age": 0,
                "area": "",
                "level": "1",
                "role": role,
                "title": "",
            },
        }

    def message_sent_event(
        self,
        message: str | list[dict[str, Any]],
        message_id: int,
        group_id: int | None = None,
        target_id: int | None = None,
    ) -> dict[str, Any]:
        """The bot's own message echoed back (NapCat's `message_sent`): to a group, or privately to `target_id`."""
        message_type = "private" if group_id is None else "group"
        sub_type = "friend" if group_id is None else "normal"
        event = {
            **self._message_event("message_sent", message_type, sub_type, message, message_id),
            "user_id": self.self_id,
            "sender": {"user_id": self.self_id, "nickname": self.nickname, "card": "", "role": "member"},
        }
        if group_id is not None:
            event["group_id"] = group_id
        else:
            event["target_id"] = target_id
        return event

    def friend_request(self, user_id: int, comment: str = "", flag: str = "flag-1") -> dict[str, Any]:
        return {**self._base("request"), "request_type": "friend", "user_id": user_id, "comment": comment, "flag": flag}

    def group_request(
        self, group_id: int, user_id: int, sub_type: str = "invite", comment: str = "", flag: str = "flag-1"
    ) -> dict[str, Any]:
        return {
            **self._base("request"),
            "request_type": "group",
            "sub_type": sub_type,
            "group_id": group_id,
            "user_id": user_id,
            "comment": comment,
            "flag": flag,
        }

    def poke(self, user_id: int, target_id: int, group_id: int | None = None) -> dict[str, Any]:
        event = {
            **self._base("notice"),
            "notice_type": "notify",
            "sub_type": "poke",
            "user_id": user_id,
            "target_id": target_id,
        }
        if group_id is not None:
            event["group_id"] = group_id
        return event

    async def push(self, event: dict[str, Any]) -> None:
        """Deliver one event to every event channel (and POST it to `post_url` when set)."""
        text = json.dumps(event, ensure_ascii=False)
        for sock in list(self._sockets):
            if sock.events:
                await self._send_text(sock, text)
        for queue in self._sse:
            queue.put_nowait(_sse_event(text.encode()))
        if self.post_url is not None:
            await self.post_event(self.post_url, event, self.post_secret)

    async def push_raw(self, data: str | bytes) -> list[int]:
        """Deliver any frame, well-formed or not, on every event channel: bytes go out unchanged (a WS TEXT
        frame, SSE data lines, a signed POST body). Returns the statuses the bot answered POSTs with."""
        raw = data.encode() if isinstance(data, str) else data
        for sock in list(self._sockets):
            if sock.events and not sock.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await sock.ws.send_frame(raw, WSMsgType.TEXT)
        for queue in self._sse:
            queue.put_nowait(_sse_event(raw))
        statuses: list[int] = []
        if self.post_url is not None:
            statuses.append(await self.post_raw(self.post_url, raw, self.post_secret))
        return statuses

    async def post_raw(self, url: str, body: bytes, secret: str = "", headers: dict[str, str] | None = None) -> int:
        """POST any body (signed when `secret` is set); the HTTP status the bot answered."""
        sent = {"Content-Type": "application/json", "X-Self-ID": str(self.self_id), **(headers or {})}
        if secret:
            sent["X-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        timeout = aiohttp.ClientTimeout(total=self.post_timeout)
        async with self._client().post(url, data=body, headers=sent, timeout=timeout) as response:
            await response.read()
        return response.status

    @staticmethod
    async def _send_text(sock: _Socket, text: str) -> None:
        if not sock.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await sock.ws.send_str(text)

    async def _heartbeat(self, sock: _Socket, interval: float) -> None:
        while not sock.ws.closed:
            await asyncio.sleep(interval)
            if not self.mute_heartbeats:  # muted: a hung implementation whose socket stays open
                await self._send_text(sock, json.dumps(self.heartbeat_event(int(interval * 1000))))

    async def _open(self, sock: _Socket) -> None:
        """Send the lifecycle connect event (before any pushed event can get in), then make the socket visible."""
        if sock.events:
            await self._send_text(sock, json.dumps(self.lifecycle_event("connect")))
            if self.heartbeat_interval:
                sock.heartbeat = asyncio.create_task(self._heartbeat(sock, self.heartbeat_interval))
        self._sockets.append(sock)
        self.connections += 1
        await self._notify()

    async def _run_socket(self, sock: _Socket) -> None:
        """Serve one open socket until it closes, answering actions on it."""
        try:
            async for msg in sock.ws:
                # an event-only socket ignores whatever the other side sends
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and sock.actions:
                    text = msg.data if isinstance(msg.data, str) else msg.data.decode(errors="replace")
                    await self._send_text(sock, json.dumps(await self._answer_frame(text), ensure_ascii=False))
        finally:
            if sock.heartbeat is not None:
                sock.heartbeat.cancel()
            if sock in self._sockets:
                self._sockets.remove(sock)
            await self._notify()
            if sock.redial is not None and self.reconnect_interval is not None and not sock.dropped:
                self._redials.add(asyncio.create_task(self._redial(sock.redial, self.reconnect_interval)))

    async def _redial(self, dial: Callable[[], Awaitable[None]], interval: float) -> None:
        """Dial again every `interval` seconds until it works, as LLOneBot does after the bot hangs up."""
        try:
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    await dial()
                    return
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._redials.discard(task)

    # ---- reverse WS -------------------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def connect_reverse(
        self,
        url: str,
        role: str = "Universal",
        token: str | None = None,
        headers: dict[str, str | None] | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Dial the bot as a reverse-WS client (retrying while it is not listening yet), like LLOneBot.

        `token` defaults to `access_token` ("" sends no Authorization). `headers` override the defaults
        case-insensitively; a None value removes that header. A refused upgrade raises WSServerHandshakeError.
        When `reconnect_interval` is set and the bot closes the link, it is dialled again every that many seconds.
        """
        token = self.access_token if token is None else token
        merged: CIMultiDict[str] = CIMultiDict(
            {"X-Self-ID": str(self.self_id), "x-client-role": role, "User-Agent": "LLOneBot/3.34.0"}
        )
        if token:
            merged["Authorization"] = f"Bearer {token}"
        for name, value in (headers or {}).items():
            merged.popall(name, None)
            if value is not None:
                merged[name] = value
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                ws = await self._client().ws_connect(url, headers=merged, autoping=True)
                break
            except aiohttp.ClientConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        kind = role.lower()

        def abort() -> None:
            raw = ws.get_extra_info("socket")
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)

        async def redial() -> None:
            await self.connect_reverse(url, role, token, headers, timeout=0)

        sock = _Socket(f"reverse/{kind}", ws, abort, events=kind != "api", actions=kind != "event", redial=redial)
        await self._open(sock)
        sock.reader = asyncio.create_task(self._run_socket(sock))

    async def drop(self) -> None:
        """Kill every WebSocket (reverse and forward) abruptly, without a close frame, like a crashed impl.

        The forward listener stays up; reconnect a reverse link by calling `connect_reverse` again (a dropped link
        is not redialled even when `reconnect_interval` is set).
        """
        sockets = list(self._sockets)
        for sock in sockets:
            sock.dropped = True
            sock.abort()
        for sock in sockets:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed(sock), 2.0)

    async def _closed(self, sock: _Socket) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: sock not in self._sockets)

    # ---- token check (HTTP, forward WS, SSE) ------------------------------------------------------------------

    def _auth_status(self, request: web.Request) -> int | None:
        """401 for a missing token, 403 for a wrong one, None when allowed (Bearer/Token, any case, or query)."""
        if not self.access_token:
            return None
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            given: str | None = value.strip() if scheme.lower() in ("bearer", "token") else ""
        else:
            given = request.query.get("access_token")
        if given is None:
            return 401
        return None if hmac.compare_digest(given, self.access_token) else 403

    def _refuse(self, request: web.Request) -> web.Response | None:
        if self.garbage_status is not None:
            self.refused += 1
            return web.Response(status=self.garbage_status, body=bytes(range(256)))
        status = self._auth_status(request)
        if status is None:
            return None
        self.refused += 1
        return web.Response(status=status)

    # ---- forward WS -------------------------------------------------------------------------------------------

    async def serve_forward(self, port: int | None = None) -> str:
        """Listen as a forward-WS server on 127.0.0.1 (on the previous port again after a stop); return its URL."""
        app = web.Application()
        for path in ("/", "/api", "/api/", "/event", "/event/"):
            app.router.add_get(path, self._forward_ws)
        self._forward_runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._forward_runner.setup()
        port = self.forward_port if port is None else port
        await web.TCPSite(self._forward_runner, "127.0.0.1", port, reuse_address=True).start()
        self.forward_port = int(self._forward_runner.addresses[0][1])
        return f"ws://127.0.0.1:{self.forward_port}/"

    async def stop_forward(self) -> None:
        """Close every forward socket with 1001 and stop listening."""
        forward = [s for s in self._sockets if s.name.startswith("forward/")]
        await asyncio.gather(*(s.ws.close(code=WSCloseCode.GOING_AWAY) for s in forward), return_exceptions=True)
        if self._forward_runner is not None:
            await self._forward_runner.cleanup()
            self._forward_runner = None

    async def _forward_ws(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        path = request.path.strip("/")
        transport = request.transport

        def abort() -> None:
            if transport is not None:
                transport.abort()

        sock = _Socket(f"forward/{path}", ws, abort, events=path != "api", actions=path != "event")
        await self._open(sock)
        await self._run_socket(sock)
        return ws

    # ---- HTTP API, SSE and HTTP POST --------------------------------------------------------------------------

    async def serve_http(self, port: int | None = None) -> str:
        """Serve the HTTP API (`/:action`) and SSE (`/_events`) on 127.0.0.1; return the base URL."""
        app = web.Application()
        app.router.add_get("/_events", self._sse_stream)
        for path in ("/{action}", "/{action}/"):
            app.router.add_get(path, self._http_action)
            app.router.add_post(path, self._http_action)
        self._http_runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._http_runner.setup()
        port = self.http_port if port is None else port
        await web.TCPSite(self._http_runner, "127.0.0.1", port, reuse_address=True).start()
        self.http_port = int(self._http_runner.addresses[0][1])
        return f"http://127.0.0.1:{self.http_port}"

    async def stop_http(self) -> None:
        await self.drop_sse()
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None

    async def _http_action(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        params: dict[str, Any] = {k: v for k, v in request.query.items() if k != "access_token"}
        if request.method == "POST" and request.body_exists:
            if request.content_type == "application/json":
                try:
                    body = json.loads(await request.text())
                except ValueError:
                    return web.Response(status=400)
                if not isinstance(body, dict):
                    return web.Response(status=400)
                params.update(body)
            elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
            else:
                return web.Response(status=406)
        action = request.match_info["action"]
        answer = await self.handle_action(action, params)
        # an unknown action is HTTP 404 here (the spec), still with the JSON body NapCat sends
        return web.json_response(answer, status=404 if action not in self._handlers else 200, dumps=_dumps)

    async def _sse_stream(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._sse.append(queue)
        self.connections += 1
        await self._notify()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.sse_ping_interval)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if item is None:
                    break
                await response.write(item)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if queue in self._sse:
                self._sse.remove(queue)
            await self._notify()
        return response

    async def drop_sse(self) -> None:
        """End every SSE stream (the bot must reconnect)."""
        queues = list(self._sse)
        for queue in queues:
            queue.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: not any(q in self._sse for q in queues)), 2.0)

    async def post_event(self, url: str, event: dict[str, Any], secret: str = "", signature: str | None = None) -> int:
        """POST one event like the HTTP POST mode does; returns the HTTP status the bot answered.

        Signed with `X-Signature: sha1=<HMAC-SHA1(secret, body)>` when `secret` is set; `signature` sends that
        header value verbatim instead. The reply is kept in `post_replies`; a JSON object reply (a quick operation)
        is also kept in `quick_operations` as `{"context": event, "operation": reply}`.
        """
        body = json.dumps(event, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "X-Self-ID": str(self.self_id), "User-Agent": "OneBot/11"}
        if signature is not None:
            headers["X-Signature"] = signature
        elif secret:
            headers["X-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        timeout = aiohttp.ClientTimeout(total=self.post_timeout)
        async with self._client().post(url, data=body, headers=headers, timeout=timeout) as response:
            text = await response.text()
        self.post_replies.append((response.status, text))
        if response.status == 200 and text.strip():
            with contextlib.suppress(ValueError):
                operation = json.loads(text)
                if isinstance(operation, dict) and operation:
                    self.quick_operations.append({"context": event, "operation": operation})
        return response.status

    # ---- lifetime ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop everything: reverse sockets, the forward and HTTP servers, SSE streams, the client session."""
        self.reconnect_interval = None
        for task in list(self._redials):
            task.cancel()
        await asyncio.gather(*self._redials, return_exceptions=True)
        reverse = [s for s in self._sockets if s.name.startswith("reverse/")]
        await asyncio.gather(*(s.ws.close() for s in reverse), return_exceptions=True)
        await asyncio.gather(*(s.reader for s in reverse if s.reader is not None), return_exceptions=True)
        await self.stop_forward()
        await self.stop_http()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _sse_event(data: bytes) -> bytes:
    """One server-sent event carrying `data` (each of its lines a `data:` line)."""
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)
