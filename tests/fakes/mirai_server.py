"""A fake mirai-api-http in forward mode: the `ws` and `http` adapters on one port, dialled by the bot."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import string
import uuid
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

# StateCode texts as mirai-api-http words them.
_MSG = {
    0: "success",
    1: "Verify Key错误",
    2: "指定Bot不存在",
    3: "Session失效或不存在",
    4: "Session未认证(未激活)",
    6: "指定操作不支持",
    400: "参数错误",
}
_SEND_COMMANDS = {"sendFriendMessage", "sendGroupMessage", "sendTempMessage", "sendOtherClientMessage"}
_OK_COMMANDS = {"recall", "sendNudge"}
_IMAGE_TYPES = {"friend", "group", "temp"}


def _state(code: int) -> dict[str, Any]:
    return {"code": code, "msg": _MSG[code]}


def _new_session_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))


class FakeMiraiServer:
    """Behaves like mirai-api-http's forward `ws` adapter plus the parts of the `http` adapter the bot uses.

    `sessions` maps each live session key to the bot qq it is bound to (None until `/bind`). A session made by a
    websocket handshake dies with that socket; `stop()` forgets every session, as a killed mirai does.
    """

    def __init__(self, verify_key: str, qq: int, port: int = 0) -> None:
        self.verify_key = verify_key
        self.qq = qq
        self.port = port
        self.nickname = "小助手"
        self.swallow_next = 0
        self.commands: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []
        self.connections = 0
        self.refused = 0
        self.sessions: dict[str, int | None] = {}
        self.garbage_upgrade = False  # answer the WebSocket upgrade with a plain 200 and garbage
        self.garbage_handshake = False  # accept the upgrade, then send garbage instead of the session frame
        self._transports: dict[web.WebSocketResponse, asyncio.Transport] = {}
        self._sockets: dict[tuple[str, str], web.WebSocketResponse] = {}  # (path, session key) -> socket
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/all"

    @property
    def connected(self) -> bool:
        return any(not ws.closed for ws in self._sockets.values())

    async def start(self) -> int:
        """Listen on 127.0.0.1 (on `port` again after a restart); return the port."""
        app = web.Application()
        for path in ("/all", "/message", "/event"):
            app.router.add_get(path, self._ws)
        app.router.add_post("/verify", self._verify)
        app.router.add_post("/bind", self._bind)
        app.router.add_post("/uploadImage", self._upload_image)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Die like a killed mirai: close every socket with 1001, then the listener. Recorded state is kept."""
        sockets = list(self._sockets.values())
        self._sockets.clear()
        self.sessions.clear()
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY) for ws in sockets), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        async with self._changed:
            self._changed.notify_all()

    def reset(self) -> None:
        """Forget recorded commands, uploads and counters."""
        self.commands.clear()
        self.uploads.clear()
        self.connections = self.refused = self.swallow_next = 0

    async def push(self, event: dict[str, Any]) -> None:
        """Deliver one event to every listener, as mirai does (reserved syncId "-1")."""
        is_message = str(event.get("type", "")).endswith("Message")
        for (path, _), ws in list(self._sockets.items()):
            if ws.closed or (path == "/message" and not is_message) or (path == "/event" and is_message):
                continue
            with contextlib.suppress(ConnectionError):
                await self._send(ws, {"syncId": "-1", "data": event})

    async def send_raw(self, data: str | bytes) -> None:
        """Send any frame to every open socket, well-formed or not; bytes go out unchanged as a TEXT frame."""
        for ws in list(self._sockets.values()):
            if ws.closed:
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                if isinstance(data, bytes):
                    await ws.send_frame(data, WSMsgType.TEXT)
                else:
                    await ws.send_str(data)

    async def drop(self) -> None:
        """Cut every socket without a close frame, like a crashed mirai; the listener stays up."""
        sockets = list(self._transports.items())
        for _, transport in sockets:
            transport.abort()
        async with self._changed:
            gone = self._changed.wait_for(lambda: all(ws not in self._transports for ws, _ in sockets))
            await asyncio.wait_for(gone, 5)

    async def wait_connected(self, timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.connected), timeout)

    async def wait_commands(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `count` commands have arrived; returns all of them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.commands) >= count), timeout)
        return list(self.commands)

    # ---- ws adapter -------------------------------------------------------------------------------------------

    def _open_session(self, verify_key: str | None, session_key: str | None, qq_text: str | None) -> tuple[int, str]:
        """mirai's handshake rules: (state code, session key, or "" when refused)."""
        if verify_key != self.verify_key:
            return 1, ""
        qq = int(qq_text) if qq_text and qq_text.isdigit() else None
        if session_key is None and qq is not None:
            if qq != self.qq:
                return 2, ""
            key = _new_session_key()
            self.sessions[key] = qq
            return 0, key
        if session_key is None:
            return 400, ""
        if session_key not in self.sessions:
            return 3, ""
        return (4, "") if self.sessions[session_key] is None else (0, session_key)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.garbage_upgrade:
            self.refused += 1
            return web.Response(status=200, body=bytes(range(256)))
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        if self.garbage_handshake:
            self.refused += 1
            await ws.send_frame(b"\xff\xfe{not a handshake", WSMsgType.TEXT)
            async for _ in ws:  # keep the socket open until the bot gives up on it
                pass
            return ws

        def param(name: str) -> str | None:
            return request.headers.get(name, request.query.get(name))

        owned = param("sessionKey") is None
        code, key = self._open_session(param("verifyKey"), param("sessionKey"), param("qq"))
        if code:
            self.refused += 1
            await self._send(ws, {"syncId": "", "data": _state(code)})
            await ws.close(code=WSCloseCode.OK, message=_MSG[code].encode())
            return ws
        await self._send(ws, {"syncId": "", "data": {"code": 0, "session": key}})
        channel = (request.path, key)
        older = self._sockets.get(channel)
        self._sockets[channel] = ws
        if older is not None:  # only a reused sessionKey collides: verifyKey+qq makes a fresh session every time
            await older.close()
        async with self._changed:
            self.connections += 1
            self._changed.notify_all()
        if request.transport is not None:
            self._transports[ws] = request.transport  # type: ignore[assignment]
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):  # mirai parses binary frames as text too
                    text = msg.data if isinstance(msg.data, str) else msg.data.decode(errors="replace")
                    await self._on_frame(ws, text)
        finally:
            self._transports.pop(ws, None)
            if self._sockets.get(channel) is ws:
                del self._sockets[channel]
            if owned:
                self.sessions.pop(key, None)
            async with self._changed:
                self._changed.notify_all()
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("command"), str):
            await self._send(ws, _state(400))  # bare, without the syncId wrapper
            return
        sync_id = frame.get("syncId")
        command = frame["command"]
        if command == "botProfile":
            data: dict[str, Any] = {"nickname": self.nickname}  # the profile itself, no code/msg
        else:
            data = self._answer(command, frame.get("content"))
            async with self._changed:
                self.commands.append(frame)
                self._changed.notify_all()
        # syncId is a String in mirai: a number is accepted and echoed back as a string
        await self._send(ws, {"syncId": None if sync_id is None else str(sync_id), "data": data})

    def _answer(self, command: str, content: Any) -> dict[str, Any]:
        if command in _SEND_COMMANDS:
            if not isinstance(content, dict) or not isinstance(content.get("messageChain"), list):
                return _state(400)
            if self.swallow_next > 0:
                # mirai reports a message that QQ accepted but silently dropped (risk control) as messageId -1
                self.swallow_next -= 1
                return {**_state(0), "messageId": -1}
            return {**_state(0), "messageId": next(self._message_ids)}
        if command.startswith("resp_") or command in _OK_COMMANDS:
            return _state(0)
        return _state(6)

    @staticmethod
    async def _send(ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        await ws.send_str(json.dumps(payload, ensure_ascii=False))

    # ---- http adapter -----------------------------------------------------------------------------------------

    def _session_of(self, request: web.Request, field: Any) -> tuple[int, str]:
        """The request's session (header `sessionKey`, then `Authorization: session S`, then the body field)."""
        key = request.headers.get("sessionKey")
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if key is None and scheme.lower() in ("session", "sessionkey"):
            key = value.strip()
        if key is None:
            key = field if isinstance(field, str) else None
        if key is None or key not in self.sessions:
            return 3, ""
        return (4, "") if self.sessions[key] is None else (0, key)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def _verify(self, request: web.Request) -> web.Response:
        if (await self._body(request)).get("verifyKey") != self.verify_key:
            return web.json_response(_state(1))
        key = _new_session_key()
        self.sessions[key] = None
        return web.json_response({"code": 0, "session": key})

    async def _bind(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        key = request.headers.get("sessionKey") or body.get("sessionKey")
        if not isinstance(key, str) or key not in self.sessions:
            return web.json_response(_state(3))
        if str(body.get("qq")) != str(self.qq):
            return web.json_response(_state(2))
        self.sessions[key] = self.qq
        return web.json_response(_state(0))

    async def _upload_image(self, request: web.Request) -> web.Response:
        form = await request.post()
        code, key = self._session_of(request, form.get("sessionKey"))
        if code:
            return web.json_response(_state(code))
        img, kind = form.get("img"), form.get("type")
        if not isinstance(img, web.FileField) or kind not in _IMAGE_TYPES:
            return web.json_response(_state(400))
        self.uploads.append({"type": kind, "size": len(img.file.read()), "session": key})
        image_uuid = str(uuid.uuid4()).upper()
        # the upload answer is unwrapped: no code/msg/data envelope
        return web.json_response(
            {"imageId": f"{{{image_uuid}}}.mirai", "url": f"{self.base_url}/img/{image_uuid.replace('-', '')}"}
        )
