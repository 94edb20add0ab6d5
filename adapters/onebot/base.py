"""OneBot 11 as a protocol: events, actions with echo, sending; the four transports subclass it."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.base import Adapter, EventSink, addressed_to, json_object
from adapters.echo import EchoStore
from adapters.fields import QQ_NUMBER, Malformed, number_id, qq_number, shown
from adapters.frames import preview
from adapters.listen import LOOPBACK
from adapters.onebot.codec import decode_forward_result, decode_message, encode_forward_nodes, encode_message
from adapters.onebot.settings import OneBotSettings
from core.errors import ActionFailedError, AdapterError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import Forward, Message, Quote

ACTION_TIMEOUT = 15.0
QUOTE_LOOKUP_TIMEOUT = 5.0
ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN}


def optional_qq(data: dict[str, Any], key: str) -> str:
    """A user or group number that may be absent ("" then); raises Malformed when present but not one."""
    return "" if data.get(key) in (None, "", 0, "0") else qq_number(data, key)


def _text(*values: object) -> str:
    """The first non-empty text among fields that should hold one (other types are not text)."""
    return next((value for value in values if isinstance(value, str) and value), "")


def _time(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11:
        return float(value)
    return 0.0


class OneBotBase(Adapter):
    """OneBot 11 seen from the bot: decode events, run actions, send messages.

    Subclasses provide `_request(action, params)` (over a socket with an echo, or HTTP) and pass
    every frame through the error boundary (`receive`/`guarded`) to `_on_frame`. Message events
    that quote a message are completed with `get_msg` (the quoted text is context for the model)
    off the receive path.
    """

    protocol = "onebot"
    max_text_length = 4500
    supports_forward = True
    mode = ""

    def __init__(self, instance: str, settings: OneBotSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: OneBotSettings = settings
        self.self_id = str(settings.qq) if settings.qq else ""
        self.token = settings.access_token.get_secret_value()
        self._pending = EchoStore("the OneBot implementation", ACTION_TIMEOUT)

    # --- actions ----------------------------------------------------------------------------------

    async def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one action and return the raw response; raises NotConnectedError."""
        raise NotImplementedError

    async def call(self, action: str, params: dict[str, Any] | None = None) -> Any:
        """Run an action; its `data`. Raises NotConnectedError, or ActionFailedError with retcode and wording."""
        response = await self._request(action, params or {})
        status = response.get("status")
        if status not in ("ok", "async"):
            retcode = response.get("retcode", "?")
            wording = _text(response.get("wording"), response.get("message"), response.get("msg"))
            code_shown = retcode if isinstance(retcode, int | str) and not isinstance(retcode, bool) else "?"
            raise ActionFailedError(action, code_shown, shown(wording, 200) if wording else "")
        return response.get("data")

    def _on_response(self, frame: dict[str, Any]) -> bool:
        """A frame answering one of our actions; True when it was one."""
        return "echo" in frame and self._pending.resolve(frame.get("echo"), frame)

    async def _login(self) -> None:
        """`get_login_info` once the link is up: the bot's qq and name."""
        try:
            info = await self.call("get_login_info")
        except AdapterError as exc:
            self.log.warning("get_login_info failed: {}", exc)
            return
        self._learn_login(info)
        self.log.info("OneBot account {} ({}) is online via {}", self.self_id, self.nickname, self.mode)

    def _learn_login(self, info: object) -> None:
        """The account number and nickname from a get_login_info answer, when they are well formed."""
        info = json_object(info)
        if not self.self_id and isinstance(info.get("user_id"), int | str):
            user_id = str(info["user_id"])
            self.self_id = user_id if QQ_NUMBER.fullmatch(user_id) else ""
        nickname = info.get("nickname")
        if isinstance(nickname, str):
            self.nickname = nickname

    # --- events -----------------------------------------------------------------------------------

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        """One frame from any transport: an action's answer, an event, or a refusal to log."""
        if self._on_response(frame):
            return
        if "post_type" in frame:
            await self._on_event(frame)
        elif frame.get("status") == "failed":
            self.log.warning(
                "OneBot refused something: retcode {} {}",
                shown(frame.get("retcode"), 20),
                shown(frame.get("wording", ""), 100),
            )

    async def _on_event(self, event: dict[str, Any]) -> None:
        post_type = event.get("post_type")
        if not self.self_id and isinstance(event.get("self_id"), int | str):
            self_id = str(event["self_id"])
            self.self_id = self_id if QQ_NUMBER.fullmatch(self_id) else ""
        try:
            if post_type == "message":
                await self._on_message(event)
            elif post_type == "notice":
                await self._on_notice(event)
            elif post_type == "request":
                await self._on_request(event)
            elif post_type == "meta_event":
                self._on_meta(event)
            elif post_type == "message_sent":
                return  # the bot's own messages (NapCat reportSelfMessage): answering them would loop
            else:
                self.log.debug("ignored OneBot event with post_type {}", shown(post_type, 40))
        except Malformed as exc:
            # A field the event's identity rests on (a user, a group, a message id, a flag) is not what
            # it must be: answering would reach the wrong chat, so the event is dropped.
            self.log.warning(
                "dropped a OneBot {} event with a malformed {}: {}", shown(post_type, 20), exc, preview(event)
            )

    def _on_meta(self, event: dict[str, Any]) -> None:
        """Lifecycle and heartbeat: transports that watch link health override this."""
        if event.get("meta_event_type") == "lifecycle":
            self.log.debug("OneBot lifecycle {}", shown(event.get("sub_type"), 20))

    async def _on_message(self, event: dict[str, Any]) -> None:
        user_id = qq_number(event, "user_id")
        if user_id == self.self_id:
            return
        message_type = event.get("message_type")
        if message_type == "group":
            chat_type, group_id = ChatType.GROUP, qq_number(event, "group_id")
        elif message_type == "private":
            temp = event.get("sub_type") == "group"
            chat_type = ChatType.TEMP if temp else ChatType.PRIVATE
            group_id = (
                (optional_qq(event, "group_id") or optional_qq(json_object(event.get("sender")), "group_id"))
                if temp
                else ""
            )
        else:
            self.log.debug("ignored a message of type {}", shown(message_type, 20))
            return
        number_id(event, "message_id")  # a malformed id would be quoted back into the chat
        message = decode_message(event.get("message"))
        if any(_needs_lookup(seg) for seg in message):
            # get_msg / get_forward_msg are round trips: do them off the receive loop so events keep flowing.
            self.tasks.spawn(
                self.guarded(event, lambda e: self._completed(e, chat_type, user_id, group_id, message)),
                name=f"{self.instance}-lookup",
            )
            return
        await self.sink(self._message_event(event, chat_type, user_id, group_id, message))

    async def _completed(
        self, event: dict[str, Any], chat_type: ChatType, user_id: str, group_id: str, message: Message
    ) -> None:
        """The message with quoted messages and forwarded chat logs fetched, then handed on."""
        filled: list[Any] = []
        for seg in message:
            if isinstance(seg, Quote) and _needs_lookup(seg):
                seg = await self._quoted(seg)
            elif isinstance(seg, Forward) and _needs_lookup(seg):
                seg = await self._forwarded(seg)
            filled.append(seg)
        await self.sink(self._message_event(event, chat_type, user_id, group_id, tuple(filled)))

    async def _forwarded(self, forward: Forward) -> Forward:
        """A forward's nodes from get_forward_msg (either the spec's or LLBot's answer shape)."""
        try:
            async with asyncio.timeout(QUOTE_LOOKUP_TIMEOUT):
                data = await self.call("get_forward_msg", {"id": forward.id, "message_id": forward.id})
        except (AdapterError, TimeoutError) as exc:
            self.log.debug("get_forward_msg {} failed: {}", forward.id, exc)
            return forward
        return Forward(nodes=decode_forward_result(data), id=forward.id)

    async def _quoted(self, quote: Quote) -> Quote:
        """The quoted message's sender and content from get_msg (or the bare reference if it fails)."""
        try:
            async with asyncio.timeout(QUOTE_LOOKUP_TIMEOUT):
                data = await self.call("get_msg", {"message_id": _number(quote.message_id)})
        except (AdapterError, TimeoutError) as exc:
            self.log.debug("get_msg {} failed: {}", quote.message_id, exc)
            return quote
        if not isinstance(data, dict):
            return quote
        sender = json_object(data.get("sender"))
        try:
            sender_id = optional_qq(sender, "user_id") or optional_qq(data, "user_id")
            group_id = optional_qq(data, "group_id")
        except Malformed:
            return quote
        origin = decode_message(data.get("message"))
        return Quote(quote.message_id, sender_id, group_id, "", origin)

    def _message_event(
        self, event: dict[str, Any], chat_type: ChatType, user_id: str, group_id: str, message: Message
    ) -> MessageEvent:
        sender = json_object(event.get("sender"))
        role = sender.get("role")
        return MessageEvent(
            adapter=self.instance,
            platform="qq",
            self_id=self.self_id,
            chat_type=chat_type,
            user_id=user_id,
            group_id=group_id,
            message=message,
            message_id=number_id(event, "message_id"),
            to_me=chat_type is not ChatType.GROUP or addressed_to(message, self.self_id),
            sender_name=_text(sender.get("card"), sender.get("nickname")),
            sender_role=ROLES.get(role, Role.MEMBER) if isinstance(role, str) else Role.MEMBER,
            time=_time(event.get("time")),
            raw=event,
        )

    async def _on_notice(self, event: dict[str, Any]) -> None:
        if event.get("notice_type") == "notify" and event.get("sub_type") == "poke":
            user_id, target = qq_number(event, "user_id"), number_id(event, "target_id")
            if target == self.self_id and user_id != self.self_id:
                await self.sink(
                    NoticeEvent(self.instance, "poke", user_id, optional_qq(event, "group_id"), target, raw=event)
                )
            return
        self.log.debug("ignored notice {}", shown(event.get("notice_type"), 40))

    async def _on_request(self, event: dict[str, Any]) -> None:
        kind = event.get("request_type")
        if kind == "friend":
            request_kind, group_id = "friend", ""
        elif kind == "group" and event.get("sub_type") == "invite":
            request_kind, group_id = "group_invite", qq_number(event, "group_id")
        else:
            self.log.debug("ignored request {} {}", shown(kind, 20), shown(event.get("sub_type"), 20))
            return
        flag = event.get("flag")
        # The only handle for answering it: implementations make it from digits and separators.
        if not isinstance(flag, str) or not flag or not flag.isprintable():
            raise Malformed("flag")
        comment = event.get("comment")
        await self.sink(
            RequestEvent(
                self.instance,
                request_kind,
                qq_number(event, "user_id"),
                group_id,
                comment if isinstance(comment, str) else "",
                raw=event,
            )
        )

    # --- sending ----------------------------------------------------------------------------------

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        forward = next((seg for seg in message if isinstance(seg, Forward)), None)
        if forward is not None:
            nodes = encode_forward_nodes(forward, self.self_id, self.nickname or "ChatGPT")
            if target.chat_type is ChatType.GROUP:
                data = await self.call(
                    "send_group_forward_msg", {"group_id": _number(target.group_id), "messages": nodes}
                )
            else:
                data = await self.call(
                    "send_private_forward_msg", {"user_id": _number(target.user_id), "messages": nodes}
                )
        else:
            if quote:
                message = (Quote(quote), *message)
            segments = encode_message(message)
            if target.chat_type is ChatType.GROUP:
                data = await self.call("send_group_msg", {"group_id": _number(target.group_id), "message": segments})
            else:
                params = {"user_id": _number(target.user_id), "message": segments}
                if target.chat_type is ChatType.TEMP and target.group_id:
                    params["group_id"] = _number(target.group_id)
                data = await self.call("send_private_msg", params)
        message_id = data.get("message_id") if isinstance(data, dict) else None
        return None if message_id is None else str(message_id)

    async def answer_request(self, event: RequestEvent, approve: bool) -> None:
        """Accept or refuse with set_friend_add_request / set_group_add_request."""
        flag = event.raw.get("flag")
        if event.kind == "friend":
            await self.call("set_friend_add_request", {"flag": flag, "approve": approve})
        else:
            await self.call("set_group_add_request", {"flag": flag, "sub_type": "invite", "approve": approve})

    def _warn_if_exposed(self, host: str, what: str) -> None:
        if host not in LOOPBACK and not self.token:
            self.log.warning(
                "SECURITY: {} listens on {} without [onebot] access_token: anyone who can reach it can feed the "
                "bot messages. Set access_token here and in LLBot/NapCat, or firewall the port.",
                what,
                host,
            )


def _number(value: str) -> int | str:
    """QQ numbers go out as ints (some implementations insist); anything else as it is."""
    return int(value) if value.isdigit() else value


def _needs_lookup(seg: object) -> bool:
    """A quote without its content, or a forward known only by id."""
    if isinstance(seg, Quote):
        return bool(seg.message_id) and not seg.origin
    return isinstance(seg, Forward) and bool(seg.id) and not seg.nodes
