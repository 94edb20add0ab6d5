"""mirai-api-http v2 as a protocol: events, commands by syncId, sending; transports subclass it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from typing import Any, Protocol

from aiohttp import WSMsgType

from adapters.base import Adapter, EventSink, json_object, parse_frame
from adapters.mirai.codec import decode_chain, encode_chain
from adapters.mirai.settings import MiraiSettings
from core.errors import ActionFailedError, AdapterError, NotConnectedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import At, Forward, ForwardNode, Image, Message, Quote, Text, describe

COMMAND_TIMEOUT = 15.0
# mirai-api-http's ktor client answers pings; a socket that stops answering is closed after this.
HEARTBEAT = 30.0
MAX_FRAME = 16 * 1024 * 1024

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


class Socket(Protocol):
    """What both aiohttp websocket classes (server and client side) offer."""

    @property
    def closed(self) -> bool: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def __aiter__(self) -> Any: ...


class MiraiBase(Adapter):
    """mirai-api-http v2 over one verified WebSocket, whichever side dialled.

    Events arrive with syncId -1; commands are envelopes matched to their answers by syncId with
    a timeout. Subclasses decide how the socket is obtained and verified (`_on_handshake`) and
    call `_activate` once it is; a newer verified socket replaces the old one.
    """

    protocol = "mirai"
    max_text_length = 4500
    supports_forward = True
    mode = ""

    def __init__(self, instance: str, settings: MiraiSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: MiraiSettings = settings
        self.self_id = str(settings.qq)
        self.log = self.log.bind(self_id=self.self_id)
        self._ws: Socket | None = None
        self.session_key = ""
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._sync_ids = itertools.count(2)
        self._stopping = False

    async def stop(self) -> None:
        """Close the socket and cancel owned tasks."""
        self._stopping = True
        self._link_down()
        if self._ws is not None:
            await self._ws.close()
        self._fail_pending()
        await super().stop()

    async def _on_handshake(self, ws: Socket, frame: dict[str, Any]) -> None:
        """A frame on a socket that is not verified yet."""
        raise NotImplementedError

    async def _activate(self, ws: Socket, session_key: str) -> None:
        """`ws` is verified: it carries events and commands from now on."""
        old, self._ws = self._ws, ws
        self.session_key = session_key
        if old is not None and old is not ws and not old.closed:
            self.log.info("a new mirai-api-http connection replaces the old one")
            await old.close()
        self.log.info("connected to mirai-api-http ({}); bot qq {} is online", self.mode, self.self_id)
        self._link_up()
        self.tasks.spawn(self._learn_nickname(), name=f"{self.instance}-profile")

    def _deactivate(self, ws: Socket) -> bool:
        """`ws` is gone; True when it was the verified link."""
        if self._ws is not ws:
            return False
        self._ws = None
        self._link_down()
        self._fail_pending()
        return True

    def _verify_failed(self, code: object, message: object) -> None:
        reason = VERIFY_FAILURES.get(code) if isinstance(code, int) else None
        text = (reason or "verify failed: code {code} {msg}").format(qq=self.self_id, code=code, msg=message or "")
        self.log.error("mirai-api-http refused verify: {}", text)

    async def _receive(self, ws: Socket) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.ERROR:
                    self.log.warning("websocket error: {}", ws.exception())
                continue
            frame = parse_frame(self.log, msg.data)
            if frame is None:
                continue
            try:
                await self._on_frame(ws, frame)
            except Exception:
                self.log.exception("dropped a frame that could not be handled")

    async def _on_frame(self, ws: Socket, frame: dict[str, Any]) -> None:
        if ws is not self._ws:
            await self._on_handshake(ws, frame)
            return
        if "syncId" not in frame:
            # A bare {"code","msg"}: mirai-api-http could not parse something we sent.
            self.log.warning("mirai-api-http refused a frame: code {} {}", frame.get("code"), frame.get("msg", ""))
            return
        sync_id = str(frame.get("syncId"))
        data = frame.get("data")
        future = self._pending.get(sync_id)
        if future is not None:
            if not future.done():
                future.set_result(data)
            return
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            await self._on_event(data)
        else:
            self.log.debug("dropped a frame with syncId {} and no event", sync_id)

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
        group = json_object(sender.get("group"))
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
        subject = json_object(data.get("subject"))
        from_id = str(data.get("fromId", ""))
        if from_id == self.self_id or str(data.get("target", "")) != self.self_id:
            return  # only pokes aimed at the bot, by someone else, are news
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

    async def _prepare(self, message: Message, target: Target) -> Message:
        """A transport's chance to change a message before it is sent (e.g. upload images over HTTP)."""
        return message

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        """Send; when QQ swallows the message (negative messageId) resend once as a forward message,
        then as a picture, and say in the log what happened."""
        message_id = await self._send_chain(target, await self._prepare(message, target), quote)
        if not _swallowed(message_id):
            return message_id
        self.log.warning(
            "QQ swallowed a message to {} (messageId {}); resending as a forward message", target.describe(), message_id
        )
        node = ForwardNode(self.self_id, self.nickname or "ChatGPT", message)
        message_id = await self._send_chain(target, (Forward(nodes=(node,)),), None)
        if not _swallowed(message_id):
            return message_id
        text = describe(message) if all(isinstance(seg, Text) for seg in message) else ""
        if text:
            self.log.warning("the forward message was swallowed too; resending as a picture")
            from core.render_image import MarkdownRenderer  # Pillow loads only when needed

            png = await asyncio.to_thread(MarkdownRenderer().render, text)
            picture = (Image(base64=base64.b64encode(png).decode()),)
            message_id = await self._send_chain(target, await self._prepare(picture, target), None)
        if _swallowed(message_id):
            self.log.error("QQ swallowed the message to {} in every form; it was not delivered", target.describe())
        return message_id

    async def _send_chain(self, target: Target, message: Message, quote: str | None) -> str | None:
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


def _swallowed(message_id: str | None) -> bool:
    return message_id is not None and message_id.startswith("-")
