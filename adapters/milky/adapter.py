"""Milky (LLBot): the API as `POST {url}/api/<name>`, events decoded here whichever transport brings them."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from adapters.base import Adapter, EventSink, addressed_to, json_object
from adapters.fields import Malformed, qq_number
from adapters.frames import preview
from adapters.link import FatalLinkError, LinkError
from adapters.milky.codec import decode_segments, encode_segments, message_segments
from adapters.milky.settings import MilkySettings
from adapters.milky.transports import TOKEN_REFUSED, EventTransport, create_transport
from core.errors import ActionFailedError, AdapterError, NotConnectedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import Message, Quote

API_TIMEOUT = aiohttp.ClientTimeout(total=30)
SCENES = {"friend": ChatType.PRIVATE, "group": ChatType.GROUP, "temp": ChatType.TEMP}
ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN}
# Milky names for answering requests (IR 1.x).
FRIEND_ANSWER = {True: "accept_friend_request", False: "reject_friend_request"}
INVITE_ANSWER = {True: "accept_group_invitation", False: "reject_group_invitation"}

_INT64 = 2**63


def sequence(data: dict[str, Any], key: str) -> int:
    """A message or invitation sequence: a non-negative int64; raises Malformed otherwise."""
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _INT64:
        return value
    raise Malformed(key)


def _text(data: dict[str, Any], *keys: str) -> str:
    """The first non-empty string among `keys`; other types count as absent."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _timestamp(value: object) -> float:
    """Unix seconds when plausible (up to year 9999), else 0: the time is informational."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if 0 <= value < 253402300800 else 0.0
    return 0.0


class MilkyAdapter(Adapter):
    """One Milky account. The API is plain HTTP; events come by `event_transport` (see transports.py)."""

    protocol = "milky"
    max_text_length = 4500
    supports_forward = True

    def __init__(self, instance: str, settings: MilkySettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: MilkySettings = settings
        self.url = settings.url.rstrip("/")
        self.token = settings.access_token.get_secret_value()
        self.self_id = ""
        self.http: aiohttp.ClientSession | None = None
        self.transport: EventTransport | None = None
        # Set when an API call finds the implementation unreachable (webhook mode watches it).
        self.api_lost = asyncio.Event()
        self._events: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "message_receive": self._on_message,
            "friend_request": self._on_friend_request,
            "group_invitation": self._on_group_invitation,
            "group_nudge": self._on_group_nudge,
            "friend_nudge": self._on_friend_nudge,
            "bot_offline": self._on_bot_offline,
        }

    @property
    def port(self) -> int | None:
        """The webhook listener's port (webhook mode only)."""
        return self.transport.port if self.transport is not None else None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.transport = create_transport(self)
        await self.transport.start()
        self.log.info("using Milky at {} (events by {})", self.url, self.settings.event_transport)

    async def stop(self) -> None:
        self._link_down()
        if self.transport is not None:
            await self.transport.stop()
        await super().stop()
        if self.http is not None:
            await self.http.close()

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for the API and the event stream, when a token is set."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(self, api: str, params: dict[str, Any] | None = None) -> Any:
        """POST /api/<api>; its `data`. Raises NotConnectedError or ActionFailedError (retcode, message)."""
        assert self.http is not None
        try:
            async with self.http.post(
                f"{self.url}/api/{api}", json=params or {}, headers=self.auth_headers(), timeout=API_TIMEOUT
            ) as response:
                if response.status == 401:
                    raise ActionFailedError(api, 401, "unauthorized (check [milky] access_token)")
                if response.status != 200:
                    raise ActionFailedError(api, response.status, "HTTP error")
                body = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            self.api_lost.set()
            raise NotConnectedError(f"Milky unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise ActionFailedError(api, "?", "the answer is not JSON") from None
        if not isinstance(body, dict) or body.get("status") != "ok":
            retcode = body.get("retcode", "?") if isinstance(body, dict) else "?"
            message = str(body.get("message", ""))[:200] if isinstance(body, dict) else ""
            raise ActionFailedError(api, retcode if isinstance(retcode, int | str) else "?", message)
        return body.get("data")

    async def check_login(self, quiet: bool = False) -> None:
        """get_login_info, learning the account; raises FatalLinkError for a refused token, LinkError otherwise."""
        try:
            info = await self.call("get_login_info")
        except ActionFailedError as exc:
            if exc.code in (401, 403):
                raise FatalLinkError(TOKEN_REFUSED.format(exc.code)) from None
            raise LinkError(f"get_login_info failed: {exc}") from None
        except NotConnectedError as exc:
            raise LinkError(str(exc)) from None
        info = json_object(info)
        try:
            self.self_id = qq_number(info, "uin")
        except Malformed:
            self.log.warning("get_login_info gave no usable uin; the account is learned from events")
        self.nickname = _text(info, "nickname") or self.nickname
        if not quiet:
            self.log.info("Milky account {} ({}) is online", self.self_id, self.nickname)

    async def login(self) -> None:
        """Learn the account once an event stream is up; a failure only costs the nickname until next time."""
        try:
            await self.check_login()
        except AdapterError as exc:
            self.log.warning("get_login_info failed: {}", exc)

    # --- events --------------------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        """One event envelope `{time, self_id, event_type, data}`, table-driven by event_type."""
        kind = event.get("event_type")
        handler = self._events.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.log.debug("ignored Milky event {}", preview(str(kind), 40))
            return
        if not self.self_id:
            with contextlib.suppress(Malformed):  # else learned from get_login_info or a later event
                self.self_id = qq_number(event, "self_id")
        try:
            data = event.get("data")
            if not isinstance(data, dict):
                raise Malformed("data")
            await handler(data)
        except Malformed as exc:
            self.log.warning("dropped a Milky {} event: missing or malformed {}", kind, exc)

    async def _on_message(self, data: dict[str, Any]) -> None:
        event = self._message(data)
        if event is not None:
            await self.sink(event)

    def _message(self, data: dict[str, Any]) -> MessageEvent | None:
        scene_name = data.get("message_scene")
        scene = SCENES.get(scene_name) if isinstance(scene_name, str) else None
        if scene is None:
            raise Malformed("message_scene")
        sender = qq_number(data, "sender_id")
        peer = qq_number(data, "peer_id")
        seq = sequence(data, "message_seq")
        if sender == self.self_id:
            return None  # the bot's own messages
        group = json_object(data.get("group"))
        member = json_object(data.get("group_member"))
        friend = json_object(data.get("friend"))
        group_id = ""
        if scene is ChatType.GROUP:
            group_id = peer
        elif scene is ChatType.TEMP and group.get("group_id") is not None:
            group_id = qq_number(group, "group_id")
        message = decode_segments(message_segments(data))
        role = member.get("role")
        return MessageEvent(
            adapter=self.instance,
            platform="qq",
            self_id=self.self_id,
            chat_type=scene,
            user_id=sender,
            group_id=group_id,
            message=message,
            message_id=str(seq),
            to_me=scene is not ChatType.GROUP or addressed_to(message, self.self_id),
            sender_name=_text(member, "card", "nickname") or _text(friend, "nickname"),
            sender_role=ROLES.get(role, Role.MEMBER) if isinstance(role, str) else Role.MEMBER,
            time=_timestamp(data.get("time")),
            raw=data,
        )

    async def _on_friend_request(self, data: dict[str, Any]) -> None:
        user = qq_number(data, "initiator_id")
        uid = _text(data, "initiator_uid")
        if not uid.isprintable() or not uid.strip():
            raise Malformed("initiator_uid")  # the request is answered by it
        await self.sink(RequestEvent(self.instance, "friend", user, "", _text(data, "comment"), raw=data))

    async def _on_group_invitation(self, data: dict[str, Any]) -> None:
        group = qq_number(data, "group_id")
        user = qq_number(data, "initiator_id")
        sequence(data, "invitation_seq")  # the invitation is answered by it
        await self.sink(RequestEvent(self.instance, "group_invite", user, group, "", raw=data))

    async def _on_group_nudge(self, data: dict[str, Any]) -> None:
        group = qq_number(data, "group_id")
        sender = qq_number(data, "sender_id")
        receiver = qq_number(data, "receiver_id")
        if receiver == self.self_id and sender != self.self_id:
            await self.sink(NoticeEvent(self.instance, "poke", sender, group, receiver, raw=data))

    async def _on_friend_nudge(self, data: dict[str, Any]) -> None:
        user = qq_number(data, "user_id")
        # Only a friend nudging the bot counts; anything but a real `true` is not that.
        if data.get("is_self_receive") is True and data.get("is_self_send") is not True:
            await self.sink(NoticeEvent(self.instance, "poke", user, "", self.self_id, raw=data))

    async def _on_bot_offline(self, data: dict[str, Any]) -> None:
        self.log.warning("the Milky account went offline: {}", preview(_text(data, "reason")))

    # --- actions -------------------------------------------------------------------------------------

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        if quote:
            message = (Quote(quote), *message)
        segments = encode_segments(message)
        if target.chat_type is ChatType.GROUP:
            data = await self.call("send_group_message", {"group_id": int(target.group_id), "message": segments})
        else:
            data = await self.call("send_private_message", {"user_id": int(target.user_id), "message": segments})
        seq = data.get("message_seq") if isinstance(data, dict) else None
        return None if seq is None else str(seq)

    async def answer_request(self, event: RequestEvent, approve: bool) -> None:
        raw = event.raw
        if event.kind == "friend":
            await self.call(FRIEND_ANSWER[approve], {"initiator_uid": raw.get("initiator_uid"), "is_filtered": False})
        else:
            await self.call(
                INVITE_ANSWER[approve], {"group_id": raw.get("group_id"), "invitation_seq": raw.get("invitation_seq")}
            )
