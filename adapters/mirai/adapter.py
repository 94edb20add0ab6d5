"""mirai-api-http reverse WebSocket: the bot listens, mirai-api-http dials in and is verified."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
from typing import Any

from aiohttp import WSMsgType, web

from adapters.base import Adapter, EventSink
from adapters.mirai.codec import decode_chain, encode_chain
from core.config import MiraiSettings
from core.errors import ActionFailedError, AdapterError, ConfigError, NotConnectedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import At, Quote

VERIFY_SYNC_ID = "1"
EXAMPLE_VERIFY_KEY = "1234567890"
COMMAND_TIMEOUT = 15.0
# mirai-api-http's ktor client answers pings; a socket that stops answering is closed after this.
HEARTBEAT = 30.0
MAX_FRAME = 16 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")

MESSAGE_EVENTS = {
    "FriendMessage": ChatType.PRIVATE,
    "GroupMessage": ChatType.GROUP,
    "TempMessage": ChatType.TEMP,
    "StrangerMessage": ChatType.STRANGER,
}
# Messages the bot's own account sent from another client: answering them would loop.
OWN_MESSAGE_EVENTS = {
    "FriendSyncMessage",
    "GroupSyncMessage",
    "TempSyncMessage",
    "StrangerSyncMessage",
    "OtherClientMessage",
}
BOT_STATE_EVENTS = {
    "BotOnlineEvent": "bot account online",
    "BotReloginEvent": "bot account logged in again",
    "BotOfflineEventActive": "bot account went offline (logged out)",
    "BotOfflineEventForce": "bot account went offline (forced off by another login)",
    "BotOfflineEventDropped": "bot account went offline (network dropped)",
}
ROLES = {"OWNER": Role.OWNER, "ADMINISTRATOR": Role.ADMIN}
VERIFY_FAILURES = {
    1: "verifyKey mismatch: [mirai] api_key must equal verifyKey in mirai-api-http's setting.yml",
    2: "bot qq not logged in: mirai has no logged-in bot with [mirai] qq = {qq}",
}


class MiraiAdapter(Adapter):
    """mirai-api-http v2 over reverse WebSocket.

    Any path is accepted. The first frame is ours (`verify` with verifyKey and qq); after a
    success reply the socket carries events (syncId -1) and command envelopes matched by syncId.
    A newly verified socket replaces the old one.
    """

    protocol = "mirai"
    max_text_length = 4500
    supports_forward = True

    def __init__(self, instance: str, settings: MiraiSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: MiraiSettings = settings
        self.self_id = str(settings.qq)
        self.log = self.log.bind(self_id=self.self_id)
        self._ws: web.WebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._sync_ids = itertools.count(2)
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on reverse_ws_host:reverse_ws_port for mirai-api-http."""
        if self.settings.reverse_ws_port is None:
            raise ConfigError(
                "mirai.reverse_ws_port",
                "请设置反向 WebSocket 端口，正向模式尚未提供 (set reverse_ws_port; forward mode is not available yet)",
            )
        host = self.settings.reverse_ws_host
        app = web.Application(client_max_size=MAX_FRAME)
        app.router.add_get("/{tail:.*}", self._accept)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.settings.reverse_ws_port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise AdapterError(f"cannot listen on {host}:{self.settings.reverse_ws_port}: {exc.strerror}") from None
        self.port = site.port
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
        self._stopping = True
        self._link_down()
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._fail_pending()
        await super().stop()

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
            if self._ws is ws:
                self._ws = None
                self._link_down()
                self._fail_pending()
                if not self._stopping:
                    self.log.warning("mirai-api-http disconnected; waiting for it to reconnect")
        return ws

    async def _send_verify(self, ws: web.WebSocketResponse) -> None:
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

    async def _receive(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.ERROR:
                    self.log.warning("websocket error: {}", ws.exception())
                continue
            try:
                frame = json.loads(msg.data)
            except ValueError:
                self.log.warning("dropped a malformed frame ({} bytes)", len(msg.data))
                continue
            if not isinstance(frame, dict):
                self.log.warning("dropped a frame that is not an object")
                continue
            try:
                await self._on_frame(ws, frame)
            except Exception:
                self.log.exception("dropped a frame that could not be handled")

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        if "syncId" not in frame:
            # A bare {"code","msg"} is mirai-api-http refusing verify or an unparsable command.
            await self._on_bare_reply(ws, frame)
            return
        sync_id = str(frame.get("syncId"))
        data = frame.get("data")
        if sync_id == VERIFY_SYNC_ID and ws is not self._ws:
            await self._on_verify_reply(ws, data if isinstance(data, dict) else {})
            return
        future = self._pending.get(sync_id)
        if future is not None:
            if not future.done():
                future.set_result(data)
            return
        if ws is not self._ws:
            self.log.debug("dropped a frame from an unverified connection")
            return
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            await self._on_event(data)
        else:
            self.log.debug("dropped a frame with syncId {} and no event", sync_id)

    async def _on_bare_reply(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        code = frame.get("code")
        if ws is not self._ws:
            await self._on_verify_reply(ws, frame)
        else:
            self.log.warning("mirai-api-http refused a frame: code {} {}", code, frame.get("msg", ""))

    async def _on_verify_reply(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        code = data.get("code")
        if code == 0:
            old, self._ws = self._ws, ws
            if old is not None and not old.closed:
                self.log.info("a new mirai-api-http connection replaces the old one")
                await old.close()
            self.log.info("verified with mirai-api-http; bot qq {} is online", self.self_id)
            self._link_up()
            self.tasks.spawn(self._learn_nickname(), name=f"{self.instance}-profile")
            return
        reason = VERIFY_FAILURES.get(code, "verify failed: code {code} {msg}") if isinstance(code, int) else ""
        reason = (reason or "verify failed: {msg}").format(qq=self.self_id, code=code, msg=data.get("msg", ""))
        self.log.error("mirai-api-http refused verify: {}", reason)
        # mirai-api-http keeps the socket open after a refusal; ask again later in case the bot
        # account logs in meanwhile, without flooding the log.
        self.tasks.spawn(self._retry_verify(ws), name=f"{self.instance}-reverify")

    async def _learn_nickname(self) -> None:
        """The bot's own name, for `require_mention = "mention"` (a message starting with it)."""
        try:
            profile = await self.call("botProfile", {})
        except AdapterError as exc:
            self.log.debug("botProfile failed: {}", exc)
            return
        nickname = profile.get("nickname")
        if isinstance(nickname, str) and nickname.strip():
            self.nickname = nickname.strip()

    async def _retry_verify(self, ws: web.WebSocketResponse, delay: float = 30.0) -> None:
        await asyncio.sleep(delay)
        if not ws.closed and ws is not self._ws:
            await self._send_verify(ws)

    async def _on_event(self, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind in MESSAGE_EVENTS:
            event = self._message_event(kind, data)
            if event is not None:
                await self.sink(event)
        elif kind in OWN_MESSAGE_EVENTS:
            return
        elif kind in BOT_STATE_EVENTS:
            level = "INFO" if kind in ("BotOnlineEvent", "BotReloginEvent") else "WARNING"
            self.log.log(level, "{} ({})", BOT_STATE_EVENTS[kind], data.get("qq", ""))
        elif kind == "NudgeEvent":
            await self._on_nudge(data)
        elif kind in ("NewFriendRequestEvent", "BotInvitedJoinGroupRequestEvent"):
            await self.sink(
                RequestEvent(
                    adapter=self.instance,
                    kind="friend" if kind == "NewFriendRequestEvent" else "group_invite",
                    user_id=str(data.get("fromId", "")),
                    group_id=str(data.get("groupId") or ""),
                    comment=str(data.get("message", "")),
                    raw=data,
                )
            )
        else:
            self.log.debug("ignored event {}", kind)

    def _message_event(self, kind: str, data: dict[str, Any]) -> MessageEvent | None:
        sender = data.get("sender")
        if not isinstance(sender, dict) or "id" not in sender:
            self.log.warning("dropped a {} without a sender", kind)
            return None
        user_id = str(sender["id"])
        if user_id == self.self_id:
            return None
        chat_type = MESSAGE_EVENTS[kind]
        group = _table(sender.get("group"))
        group_id = str(group.get("id", "")) if chat_type in (ChatType.GROUP, ChatType.TEMP) else ""
        decoded = decode_chain(data.get("messageChain"))
        to_me = chat_type is not ChatType.GROUP or any(
            (isinstance(seg, At) and seg.target == self.self_id)
            or (isinstance(seg, Quote) and seg.sender_id == self.self_id)
            for seg in decoded.message
        )
        return MessageEvent(
            adapter=self.instance,
            platform="qq",
            self_id=self.self_id,
            chat_type=chat_type,
            user_id=user_id,
            group_id=group_id,
            message=decoded.message,
            message_id=decoded.message_id,
            to_me=to_me,
            sender_name=str(sender.get("memberName") or sender.get("nickname") or ""),
            sender_role=ROLES.get(str(sender.get("permission", "")), Role.MEMBER),
            time=float(decoded.time),
            raw=data,
        )

    async def _on_nudge(self, data: dict[str, Any]) -> None:
        subject = _table(data.get("subject"))
        from_id = str(data.get("fromId", ""))
        if from_id == self.self_id:
            return
        await self.sink(
            NoticeEvent(
                adapter=self.instance,
                kind="poke",
                user_id=from_id,
                group_id=str(subject.get("id", "")) if subject.get("kind") == "Group" else "",
                target_id=str(data.get("target", "")),
                raw=data,
            )
        )

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnectedError("mirai-api-http disconnected"))
        self._pending.clear()

    async def call(self, command: str, content: dict[str, Any], sub_command: str | None = None) -> dict[str, Any]:
        """Run one mirai-api-http command over the socket; raises NotConnectedError/ActionFailedError."""
        ws = self._ws
        if ws is None or ws.closed:
            raise NotConnectedError("mirai-api-http is not connected")
        sync_id = str(next(self._sync_ids))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[sync_id] = future
        frame = {"syncId": sync_id, "command": command, "subCommand": sub_command, "content": content}
        try:
            try:
                await ws.send_str(json.dumps(frame, ensure_ascii=False))
            except (ConnectionError, RuntimeError) as exc:
                raise NotConnectedError(str(exc)) from None
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    data = await future
            except TimeoutError:
                raise ActionFailedError(command, "timeout", f"no answer in {COMMAND_TIMEOUT}s") from None
        finally:
            self._pending.pop(sync_id, None)
        if not isinstance(data, dict):
            raise ActionFailedError(command, "?", "answer is not an object")
        code = data.get("code", 0)
        if code != 0:
            raise ActionFailedError(command, code, str(data.get("msg", "")))
        return data

    async def _send(self, target: Target, message: Any, quote: str | None) -> str | None:
        content: dict[str, Any] = {"messageChain": encode_chain(message)}
        if quote and quote.lstrip("-").isdigit():
            content["quote"] = int(quote)
        if target.chat_type is ChatType.GROUP:
            command = "sendGroupMessage"
            content["target"] = int(target.group_id)
        elif target.chat_type is ChatType.TEMP:
            command = "sendTempMessage"
            content["qq"] = int(target.user_id)
            content["group"] = int(target.group_id)
        else:
            command = "sendFriendMessage"
            content["target"] = int(target.user_id)
        data = await self.call(command, content)
        message_id = data.get("messageId")
        return None if message_id is None else str(message_id)

    async def answer_request(self, event: RequestEvent, approve: bool) -> None:
        """Accept or decline a friend request or group invitation."""
        command = "resp_newFriendRequestEvent" if event.kind == "friend" else "resp_botInvitedJoinGroupRequestEvent"
        await self.call(
            command,
            {
                "eventId": event.raw.get("eventId"),
                "fromId": event.raw.get("fromId"),
                "groupId": event.raw.get("groupId"),
                "operate": 0 if approve else 1,
                "message": "",
            },
        )


def _table(value: object) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one (fields may be missing or malformed)."""
    return value if isinstance(value, dict) else {}
