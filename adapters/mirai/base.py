"""mirai-api-http v2 as a protocol: events, commands by syncId, sending; transports subclass it."""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Protocol

from aiohttp import WSMsgType

from adapters.base import Adapter, EventSink, addressed_to
from adapters.echo import EchoStore
from adapters.fields import Malformed, mapping, number_id, qq_number, shown
from adapters.frames import preview
from adapters.link import LinkStatus
from adapters.mirai.codec import decode_chain, encode_chain
from adapters.mirai.settings import MiraiSettings
from core.errors import ActionFailedError, AdapterError, MessageSwallowedError, NotConnectedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import Forward, ForwardNode, Message

COMMAND_TIMEOUT = 15.0
# mirai-api-http's ktor client answers pings; a socket that stops answering is closed after this.
HEARTBEAT = 30.0

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
REQUEST_EVENTS = {"NewFriendRequestEvent": "friend", "BotInvitedJoinGroupRequestEvent": "group_invite"}
ROLES = {"OWNER": Role.OWNER, "ADMINISTRATOR": Role.ADMIN}
WRONG_VERIFY_KEY = 1
VERIFY_FAILURES = {
    WRONG_VERIFY_KEY: "verifyKey mismatch: [mirai] api_key must equal verifyKey in mirai-api-http's setting.yml",
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


def _name(*values: object) -> str:
    """The first non-empty text among a sender's name fields (other types are not names)."""
    return next((value for value in values if isinstance(value, str) and value), "")


class MiraiBase(Adapter):
    """mirai-api-http v2 over one verified WebSocket, whichever side dialled.

    Events arrive with syncId -1; commands are envelopes matched to their answers by syncId with
    a timeout. Subclasses decide how the socket is obtained and verified and call `_activate`
    once it is; a newer verified socket replaces the old one. Every frame passes the error
    boundary (`receive`): a frame that cannot be handled is logged and dropped, never fatal.
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
        # syncId 1 is the reverse-ws verify; -1 is reserved for events.
        self._pending = EchoStore("mirai-api-http", COMMAND_TIMEOUT, first=2)

    async def stop(self) -> None:
        """Close the socket and cancel owned tasks."""
        self.stopping = True
        self._link_down()
        if self._ws is not None:
            await self._ws.close()
        self._pending.fail_all()
        await super().stop()

    async def _on_handshake(self, ws: Socket, frame: dict[str, Any]) -> None:
        """A frame on a socket that is not verified yet."""
        raise NotImplementedError

    def _on_verified(self, up: bool) -> None:
        """The verified socket came (`up`) or went: transports report it in their link status."""

    async def _activate(self, ws: Socket, session_key: str) -> None:
        """`ws` is verified: it carries events and commands from now on."""
        old, self._ws = self._ws, ws
        self.session_key = session_key
        if old is not None and old is not ws and not old.closed:
            self.log.info("a new mirai-api-http connection replaces the old one")
            await old.close()
        self.log.info("connected to mirai-api-http ({}); bot qq {} is online", self.mode, self.self_id)
        self._on_verified(True)
        self._link_up()
        self.tasks.spawn(self._learn_nickname(), name=f"{self.instance}-profile")

    def _deactivate(self, ws: Socket) -> bool:
        """`ws` is gone; True when it was the verified link."""
        if self._ws is not ws:
            return False
        self._ws = None
        self._link_down()
        self._on_verified(False)
        self._pending.fail_all()
        return True

    def _refusal(self, code: object, message: object) -> str:
        """The one line explaining a refused verify (the key itself is never part of it)."""
        reason = VERIFY_FAILURES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
        if reason is not None:
            return reason.format(qq=self.self_id)
        return f"verify failed: code {shown(code, 20)} {shown(message or '', 100)}"

    async def _receive(self, ws: Socket, status: LinkStatus) -> None:
        """Every frame of `ws` through the error boundary, until the socket closes."""
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self.receive(msg.data, partial(self._on_frame, ws), status)
            elif msg.type is WSMsgType.ERROR:
                self.log.warning("websocket error: {}", ws.exception())

    async def _on_frame(self, ws: Socket, frame: dict[str, Any]) -> None:
        if ws is not self._ws:
            await self._on_handshake(ws, frame)
            return
        if "syncId" not in frame:
            # A bare {"code","msg"}: mirai-api-http could not parse something we sent.
            self.log.warning(
                "mirai-api-http refused a frame: code {} {}",
                shown(frame.get("code"), 20),
                shown(frame.get("msg", ""), 100),
            )
            return
        data = frame.get("data")
        if self._pending.resolve(frame.get("syncId"), data):
            return
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            await self._on_event(data)
        else:
            self.log.debug("dropped a frame with syncId {} and no event", shown(frame.get("syncId"), 20))

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
        kind: str = data["type"]
        try:
            await self._dispatch(kind, data)
        except Malformed as exc:
            # A field the event's identity rests on (a sender, a group, a request id) is not what it
            # must be: answering would reach the wrong chat, so the event is dropped.
            self.log.warning("dropped a {} event with a malformed {}: {}", shown(kind, 40), exc, preview(data))

    async def _dispatch(self, kind: str, data: dict[str, Any]) -> None:
        if kind in MESSAGE_EVENTS:
            event = self._message_event(kind, data)
            if event is not None:
                await self.sink(event)
        elif kind in OWN_MESSAGE_EVENTS:
            return
        elif kind in BOT_STATE_EVENTS:
            level = "INFO" if kind in ("BotOnlineEvent", "BotReloginEvent") else "WARNING"
            self.log.log(level, "{} ({})", BOT_STATE_EVENTS[kind], shown(data.get("qq", ""), 20))
        elif kind == "NudgeEvent":
            await self._on_nudge(data)
        elif kind in REQUEST_EVENTS:
            await self.sink(self._request_event(REQUEST_EVENTS[kind], data))
        else:
            self.log.debug("ignored event {}", shown(kind, 40))

    def _message_event(self, kind: str, data: dict[str, Any]) -> MessageEvent | None:
        """The event, None for the bot's own messages; raises Malformed when who or where is unclear."""
        sender = mapping(data, "sender")
        user_id = qq_number(sender, "id")
        if user_id == self.self_id:
            return None
        chat_type = MESSAGE_EVENTS[kind]
        group_id = qq_number(mapping(sender, "group"), "id") if chat_type in (ChatType.GROUP, ChatType.TEMP) else ""
        chain = data.get("messageChain")
        if not isinstance(chain, list):
            raise Malformed("messageChain")
        decoded = decode_chain(chain)
        permission = sender.get("permission")
        return MessageEvent(
            adapter=self.instance,
            platform="qq",
            self_id=self.self_id,
            chat_type=chat_type,
            user_id=user_id,
            group_id=group_id,
            message=decoded.message,
            message_id=decoded.message_id,
            to_me=chat_type is not ChatType.GROUP or addressed_to(decoded.message, self.self_id),
            sender_name=_name(sender.get("memberName"), sender.get("nickname")),
            sender_role=ROLES.get(permission, Role.MEMBER) if isinstance(permission, str) else Role.MEMBER,
            time=float(decoded.time),
            raw=data,
        )

    async def _on_nudge(self, data: dict[str, Any]) -> None:
        from_id = qq_number(data, "fromId")
        target = number_id(data, "target")
        if from_id == self.self_id or target != self.self_id:
            return  # only pokes aimed at the bot, by someone else, are news
        subject = mapping(data, "subject")
        where = subject.get("kind")
        if where not in ("Group", "Friend", "Stranger"):
            raise Malformed("subject")  # where to answer is unknown
        await self.sink(
            NoticeEvent(
                adapter=self.instance,
                kind="poke",
                user_id=from_id,
                group_id=qq_number(subject, "id") if where == "Group" else "",
                target_id=target,
                raw=data,
            )
        )

    def _request_event(self, kind: str, data: dict[str, Any]) -> RequestEvent:
        """A friend request or group invitation; raises Malformed when it could not be answered correctly."""
        qq_number(data, "eventId")  # positive like a QQ number: the handle the answer goes back with
        # A friend request carries groupId 0, or the group it came through.
        no_group = kind == "friend" and data.get("groupId") in (None, 0, "0")
        group_id = "" if no_group else qq_number(data, "groupId")
        comment = data.get("message")
        return RequestEvent(
            adapter=self.instance,
            kind=kind,
            user_id=qq_number(data, "fromId"),
            group_id=group_id,
            comment=comment if isinstance(comment, str) else "",
            raw=data,
        )

    async def call(self, command: str, content: dict[str, Any], sub_command: str | None = None) -> dict[str, Any]:
        """Run one mirai-api-http command over the socket; raises NotConnectedError/ActionFailedError."""
        ws = self._ws
        if ws is None or ws.closed:
            raise NotConnectedError("mirai-api-http is not connected")
        sync_id = self._pending.next_key()
        frame = json.dumps(
            {"syncId": sync_id, "command": command, "subCommand": sub_command, "content": content}, ensure_ascii=False
        )
        data = await self._pending.request(sync_id, command, partial(ws.send_str, frame))
        if not isinstance(data, dict):
            raise ActionFailedError(command, "?", "answer is not an object")
        code = data.get("code", 0)
        if code != 0:
            code_shown = code if isinstance(code, int | str) else "?"
            raise ActionFailedError(command, code_shown, shown(data.get("msg", ""), 200))
        return data

    async def _prepare(self, message: Message, target: Target) -> Message:
        """A transport's chance to change a message before it is sent (e.g. upload images over HTTP)."""
        return message

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        """Send; when QQ swallows the message (negative messageId) resend it once as a forward message,
        and raise MessageSwallowedError when that is swallowed too (the replier may send a picture)."""
        message_id = await self._send_chain(target, await self._prepare(message, target), quote)
        if not _swallowed(message_id):
            return message_id
        self.log.warning(
            "QQ swallowed a message to {} (messageId {}); resending as a forward message", target.describe(), message_id
        )
        node = ForwardNode(self.self_id, self.nickname or "ChatGPT", message)
        message_id = await self._send_chain(target, (Forward(nodes=(node,)),), None)
        if message_id is None or not _swallowed(message_id):
            return message_id
        self.log.warning("the forward message to {} was swallowed too", target.describe())
        raise MessageSwallowedError(message_id)

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
                # The ids as the event was validated (`_request_event`), as the numbers mirai wants.
                "eventId": int(event.raw["eventId"]),
                "fromId": int(event.user_id),
                "groupId": int(event.group_id or 0),
                "operate": 0 if approve else 1,
                "message": "",
            },
        )


def _swallowed(message_id: str | None) -> bool:
    return message_id is not None and message_id.startswith("-")
