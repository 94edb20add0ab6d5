"""A fake Milky protocol implementation (like Lagrange.Milky): HTTP API, events over WebSocket / SSE, WebHook."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

Response = dict[str, Any]

_SEND_APIS = {"send_private_message": ("friend", "user_id"), "send_group_message": ("group", "group_id")}
# Calls the bot makes on its own at start-up; left out of `calls` so tests count only what they caused.
_UNRECORDED = {"get_login_info", "get_impl_info"}
_SCENES = ("friend", "group", "temp")


def ok(data: dict[str, Any] | None = None) -> Response:
    """A success answer; `data` is `{}` when an API returns nothing, as the spec requires."""
    return {"status": "ok", "retcode": 0, "data": data if data is not None else {}}


def failed(retcode: int, message: str) -> Response:
    """A failure answer: -400 bad params, -403 not logged in, anything else implementation-defined."""
    return {"status": "failed", "retcode": retcode, "message": message}


def sent_text(call: dict[str, Any]) -> str:
    """The plain text of a recorded send call's outgoing `message` segments."""
    segments = call["params"].get("message")
    if not isinstance(segments, list):
        return ""
    return "".join(
        str((s.get("data") or {}).get("text", "")) for s in segments if isinstance(s, dict) and s.get("type") == "text"
    )


def sent_voices(call: dict[str, Any]) -> list[bytes]:
    """The bytes of every outgoing `record` segment of a recorded send call whose `uri` is inline (`base64://`)."""
    segments = call["params"].get("message")
    uris = [
        str((s.get("data") or {}).get("uri", ""))
        for s in (segments if isinstance(segments, list) else [])
        if isinstance(s, dict) and s.get("type") == "record"
    ]
    return [base64.b64decode(uri.removeprefix("base64://")) for uri in uris if uri.startswith("base64://")]


def record_segment(temp_url: str, duration: int = 0) -> dict[str, Any]:
    """A received voice as Milky sends it: a resource id, a temporary download URL and the length in seconds."""
    return {"type": "record", "data": {"resource_id": "rec-1", "temp_url": temp_url, "duration": duration}}


def _uin(value: Any) -> int | None:
    """An int64 param; JSON numbers only, as a Milky implementation's typed parser would insist."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


class FakeMilky:
    """Behaves like a Milky implementation as the bot sees it: it is the HTTP server, the bot is the client.

    Every API call except get_login_info / get_impl_info is recorded in `calls` as `{"api", "params"}`.
    Sent messages get message_seq values from 1000 up and are stored in `messages` (keyed by
    `(message_scene, peer_id, message_seq)`) so `get_message` finds them; `message_event` stores its message
    there too. `forwards` maps a forward_id to the `messages` list `get_forwarded_messages` answers with.
    """

    def __init__(self, self_id: int, access_token: str = "", nickname: str = "小助手") -> None:
        self.self_id = self_id
        self.access_token = access_token
        self.nickname = nickname
        self.calls: list[dict[str, Any]] = []
        self.messages: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.forwards: dict[str, list[dict[str, Any]]] = {}
        self.fail_next = 0
        self.webhook_url: str | None = None
        self.webhook_statuses: list[int] = []
        self.sse_ping_interval = 1.0
        self.sse_pretty = False  # True: multi-line `data:` like the spec's SSE sample, to test the bot's parser
        self.refused = 0
        self.connections = 0  # event connections accepted so far (a reconnect makes it grow)
        # HTTP statuses to answer the next /event requests with (an HTML page instead of events), one each.
        self.event_failures: list[int] = []
        self.port = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._sse: list[asyncio.Queue[str | bytes | None]] = []
        self._seqs = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Response]] = {
            "send_private_message": lambda p: self._send(p, "send_private_message"),
            "send_group_message": lambda p: self._send(p, "send_group_message"),
            "get_login_info": lambda p: ok({"uin": self.self_id, "nickname": self.nickname}),
            "get_impl_info": lambda p: ok(
                {
                    "impl_name": "FakeMilky",
                    "impl_version": "0.1.0",
                    "qq_protocol_version": "9.9.19-34740",
                    "qq_protocol_type": "linux",
                    "milky_version": "1.2",
                }
            ),
            "get_message": self._get_message,
            "get_forwarded_messages": self._get_forwarded,
            "accept_friend_request": self._friend_request,
            "reject_friend_request": self._friend_request,
            "accept_group_invitation": self._group_invitation,
            "reject_group_invitation": self._group_invitation,
        }

    # ---- state ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def channels(self) -> list[str]:
        """The open event connections: one "ws" or "sse" each."""
        return ["ws"] * sum(not ws.closed for ws in self._sockets) + ["sse"] * len(self._sse)

    async def wait_channels(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait until at least `count` event connections are open; returns them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.channels) >= count), timeout)
        return self.channels

    async def wait_calls(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `count` calls have been recorded; returns all of them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.calls) >= count), timeout)
        return list(self.calls)

    def reset(self) -> None:
        """Forget recorded calls, webhook statuses and counters."""
        self.calls.clear()
        self.webhook_statuses.clear()
        self.refused = self.connections = self.fail_next = 0

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- APIs -------------------------------------------------------------------------------------------------

    async def handle_api(self, api: str, params: dict[str, Any]) -> Response:
        """Answer one known API call the way a Milky implementation would."""
        if api not in _UNRECORDED:
            async with self._changed:
                self.calls.append({"api": api, "params": params})
                self._changed.notify_all()
        answer: Response = self._handlers[api](params)
        return answer

    def _send(self, params: dict[str, Any], api: str) -> Response:
        scene, key = _SEND_APIS[api]
        peer = _uin(params.get(key))
        message = params.get("message")
        if peer is None:
            return failed(-400, f"{key} ({params.get(key)!r}) 不是一个合法的 QQ 号")
        if not isinstance(message, list) or not message:
            return failed(-400, "message 不能为空")
        if self.fail_next > 0:
            self.fail_next -= 1
            return failed(-500, "send failed")
        seq = next(self._seqs)
        while (scene, peer, seq) in self.messages:
            seq = next(self._seqs)
        now = int(time.time())
        # Kept as the bot's own message, so quoting it or fetching it with get_message works.
        stored: dict[str, Any] = {
            "message_scene": scene,
            "peer_id": peer,
            "message_seq": seq,
            "sender_id": self.self_id,
            "time": now,
            "segments": message,
        }
        self.messages[(scene, peer, seq)] = stored
        return ok({"message_seq": seq, "time": now})

    def _get_message(self, params: dict[str, Any]) -> Response:
        scene, peer, seq = params.get("message_scene"), _uin(params.get("peer_id")), params.get("message_seq")
        if scene not in _SCENES or peer is None or not isinstance(seq, int):
            return failed(-400, "参数错误")
        message = self.messages.get((scene, peer, seq))
        return ok({"message": message}) if message is not None else failed(-404, "消息不存在")

    def _get_forwarded(self, params: dict[str, Any]) -> Response:
        forward_id = params.get("forward_id")
        if not isinstance(forward_id, str) or not forward_id:
            return failed(-400, "forward_id 不能为空")
        messages = self.forwards.get(forward_id)
        return ok({"messages": messages}) if messages is not None else failed(-404, "合并转发消息不存在")

    def _friend_request(self, params: dict[str, Any]) -> Response:
        # The IR answers a friend request by the initiator's UID (from the event), not the QQ number.
        uid = params.get("initiator_uid")
        if not isinstance(uid, str) or not uid:
            return failed(-400, "initiator_uid 不能为空")
        return ok()

    def _group_invitation(self, params: dict[str, Any]) -> Response:
        if _uin(params.get("group_id")) is None or not isinstance(params.get("invitation_seq"), int):
            return failed(-400, "group_id 和 invitation_seq 必须是整数")
        return ok()

    # ---- events -----------------------------------------------------------------------------------------------

    def _event(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"time": int(time.time()), "self_id": self.self_id, "event_type": event_type, "data": data}

    def message_event(
        self,
        scene: str,
        peer_id: int,
        sender_id: int,
        segments: list[dict[str, Any]],
        message_seq: int,
        use_old_key: bool = False,
        *,
        nickname: str = "member",
        role: str = "member",
        card: str = "",
        group_name: str = "测试群",
    ) -> dict[str, Any]:
        """A message_receive event for scene friend|group|temp (`message` instead of `segments` if use_old_key)."""
        now = int(time.time())
        data: dict[str, Any] = {
            "message_scene": scene,
            "peer_id": peer_id,
            "message_seq": message_seq,
            "sender_id": sender_id,
            "time": now,
            "message" if use_old_key else "segments": segments,
        }
        group = {"group_id": peer_id, "group_name": group_name, "member_count": 42, "max_member_count": 200}
        if scene == "friend":
            data["friend"] = {
                "user_id": peer_id,
                "nickname": nickname,
                "sex": "unknown",
                "qid": "",
                "remark": "",
                "category": {"category_id": 0, "category_name": "我的好友"},
            }
        elif scene == "group":
            data["group"] = group
            data["group_member"] = {
                "user_id": sender_id,
                "nickname": nickname,
                "sex": "unknown",
                "group_id": peer_id,
                "card": card,
                "title": "",
                "level": 1,
                "role": role,
                "join_time": now - 86400,
                "last_sent_time": now,
            }
        # A temp chat's `group` is optional and its peer is the user, so the fake leaves it out.
        self.messages[(scene, peer_id, message_seq)] = {
            **{k: v for k, v in data.items() if k != "message"},
            "segments": segments,
        }
        return self._event("message_receive", data)

    def friend_request(self, initiator_id: int, comment: str = "", via: str = "") -> dict[str, Any]:
        data = {"initiator_id": initiator_id, "initiator_uid": f"u_fake{initiator_id}", "comment": comment, "via": via}
        return self._event("friend_request", data)

    def group_invitation(self, group_id: int, invitation_seq: int, initiator_id: int) -> dict[str, Any]:
        data = {"group_id": group_id, "invitation_seq": invitation_seq, "initiator_id": initiator_id}
        return self._event("group_invitation", data)

    def group_nudge(self, group_id: int, sender_id: int, receiver_id: int) -> dict[str, Any]:
        data = {
            "group_id": group_id,
            "sender_id": sender_id,
            "receiver_id": receiver_id,
            "display_action": "戳了戳",
            "display_suffix": "",
            "display_action_img_url": "",
        }
        return self._event("group_nudge", data)

    def friend_nudge(self, user_id: int, is_self_send: bool = False, is_self_receive: bool = True) -> dict[str, Any]:
        """A friend nudge; by default the friend nudged the bot."""
        data = {
            "user_id": user_id,
            "is_self_send": is_self_send,
            "is_self_receive": is_self_receive,
            "display_action": "戳了戳",
            "display_suffix": "",
            "display_action_img_url": "",
        }
        return self._event("friend_nudge", data)

    async def push(self, event: dict[str, Any]) -> None:
        """Send one event to every WS / SSE connection, then POST it to `webhook_url` when set."""
        text = json.dumps(event, ensure_ascii=False)
        for ws in list(self._sockets):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(text)
        sse_text = json.dumps(event, ensure_ascii=False, indent=2) if self.sse_pretty else text
        for queue in self._sse:
            queue.put_nowait(sse_text)
        if self.webhook_url is not None:
            await self._post_webhook(self.webhook_url, text)

    async def push_raw(self, frame: str | bytes, *, binary: bool = False) -> None:
        """Send `frame` exactly as given (even invalid UTF-8 in a text frame) on every WS / SSE connection, then
        POST it to `webhook_url` when set."""
        data = frame.encode("utf-8", errors="surrogatepass") if isinstance(frame, str) else frame
        for ws in list(self._sockets):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_frame(data, WSMsgType.BINARY if binary else WSMsgType.TEXT)
        lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
        for queue in self._sse:
            queue.put_nowait(b"event: milky_event\n" + lines + b"\n")
        if self.webhook_url is not None:
            await self._post_webhook(self.webhook_url, data)

    async def _post_webhook(self, url: str, body: str | bytes) -> None:
        headers = {"Content-Type": "application/json"}
        if self.access_token:
            # Since 1.1 the implementation signs webhook posts with its own token, and the app checks it.
            headers["Authorization"] = f"Bearer {self.access_token}"
        status = 0  # 0 = no HTTP answer at all (refused, reset or timed out)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._client().post(
                url,
                data=body.encode() if isinstance(body, str) else body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                await response.read()
                status = response.status
        self.webhook_statuses.append(status)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def drop(self) -> None:
        """Close every event connection (WS with 1001, SSE by ending the stream); the bot must reconnect."""
        sockets, queues = list(self._sockets), list(self._sse)
        for queue in queues:
            queue.put_nowait(None)
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY) for ws in sockets), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: not any(q in self._sse for q in queues) and not any(w in self._sockets for w in sockets)
                    ),
                    2.0,
                )

    # ---- HTTP server ------------------------------------------------------------------------------------------

    def _token_ok(self, request: web.Request, allow_query: bool) -> bool:
        if not self.access_token:
            return True
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else ""
        elif allow_query:
            # Only /event takes the query fallback, for clients (browsers' EventSource) that cannot set headers.
            given = request.query.get("access_token", "")
        else:
            given = ""
        return bool(given) and hmac.compare_digest(given.encode(), self.access_token.encode())

    def _refuse(self) -> web.Response:
        self.refused += 1
        return web.Response(status=401)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request, allow_query=False):
            return self._refuse()
        api = request.match_info["api"]
        if api not in self._handlers:
            return web.Response(status=404)
        if request.content_type != "application/json":
            return web.Response(status=415)
        # Every other outcome is HTTP 200; a body that is not a JSON object is a parameter error (-400).
        try:
            params = json.loads(await request.text())
        except ValueError:
            return web.json_response(failed(-400, "请求体不是合法的 JSON"), dumps=_dumps)
        if not isinstance(params, dict):
            return web.json_response(failed(-400, "请求体必须是 JSON 对象"), dumps=_dumps)
        return web.json_response(await self.handle_api(api, params), dumps=_dumps)

    async def _event_endpoint(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request, allow_query=True):
            return self._refuse()
        if self.event_failures:
            return web.Response(status=self.event_failures.pop(0), text="<html>busy</html>", content_type="text/html")
        # The spec: an `Upgrade: websocket` header means WebSocket, anything else gets SSE.
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return await self._sse_stream(request)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections += 1
        await self._notify()
        try:
            async for _ in ws:
                pass  # the event socket is push-only; whatever the bot sends is ignored
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
            await self._notify()
        return ws

    async def _sse_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._sse.append(queue)
        self.connections += 1
        await self._notify()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.sse_ping_interval)
                except TimeoutError:
                    # A comment line: keeps proxies from idling the stream out and finds dead clients.
                    await response.write(b": ping\n\n")
                    continue
                if item is None:
                    break
                if isinstance(item, bytes):
                    await response.write(item)  # a raw event, already framed by push_raw
                    continue
                lines = "".join(f"data: {line}\n" for line in item.split("\n"))
                await response.write(f"event: milky_event\n{lines}\n".encode())
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if queue in self._sse:
                self._sse.remove(queue)
            await self._notify()
        return response

    async def start(self, port: int | None = None) -> str:
        """Listen on 127.0.0.1 (on the previous port again after a stop); return the base URL."""
        app = web.Application()
        app.router.add_post("/api/{api}", self._api)
        app.router.add_get("/event", self._event_endpoint)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        port = self.port if port is None else port
        await web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        return self.base_url

    async def stop(self) -> None:
        """Close event connections, stop listening and close the webhook client; `start()` may follow."""
        await self.drop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)
