"""OneBot 11 as a protocol: events, actions with echo, sending; the four transports subclass it."""

from __future__ import annotations

import asyncio
import hmac
import itertools
from typing import Any

from adapters.base import Adapter, EventSink, json_object
from adapters.onebot.codec import decode_forward_result, decode_message, encode_forward_nodes, encode_message
from adapters.onebot.settings import OneBotSettings
from core.errors import ActionFailedError, AdapterError, NotConnectedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import At, Forward, Message, Quote

ACTION_TIMEOUT = 15.0
QUOTE_LOOKUP_TIMEOUT = 5.0
ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def token_matches(expected: str, authorization: str, query_token: str) -> bool:
    """`Authorization: Bearer|Token <t>` (any case) or `?access_token=<t>`, compared in constant time."""
    given = query_token
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() in ("bearer", "token") and value:
        given = value.strip()
    return hmac.compare_digest(given.encode(), expected.encode())


class OneBotBase(Adapter):
    """OneBot 11 seen from the bot: decode events, run actions, send messages.

    Subclasses provide `_request(action, params)` (over a socket with an echo, or HTTP) and feed
    every event dict to `_on_event`. Message events that quote a message are completed with
    `get_msg` (the quoted text is context for the model) off the receive path.
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
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._echoes = itertools.count(1)
        self._stopping = False

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
            wording = str(response.get("wording") or response.get("message") or response.get("msg") or "")
            raise ActionFailedError(action, retcode if isinstance(retcode, int | str) else "?", wording)
        return response.get("data")

    def _next_echo(self) -> str:
        return str(next(self._echoes))

    async def _await_echo(self, echo: str, send: Any) -> dict[str, Any]:
        """Register `echo`, run `send()`, wait for the matching response (with a timeout)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[echo] = future
        try:
            try:
                await send()
            except (ConnectionError, RuntimeError) as exc:
                raise NotConnectedError(str(exc)) from None
            try:
                async with asyncio.timeout(ACTION_TIMEOUT):
                    response = await future
            except TimeoutError:
                raise ActionFailedError("action", "timeout", f"no answer in {ACTION_TIMEOUT}s") from None
        finally:
            self._pending.pop(echo, None)
        return response if isinstance(response, dict) else {}

    def _on_response(self, frame: dict[str, Any]) -> bool:
        """A frame answering one of our actions; True when it was one."""
        echo = frame.get("echo")
        future = self._pending.get(str(echo)) if echo is not None else None
        if future is None:
            return False
        if not future.done():
            future.set_result(frame)
        return True

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnectedError("OneBot link lost"))
        self._pending.clear()

    async def _login(self) -> None:
        """`get_login_info` once the link is up: the bot's qq and name."""
        try:
            info = await self.call("get_login_info")
        except AdapterError as exc:
            self.log.warning("get_login_info failed: {}", exc)
            return
        if isinstance(info, dict):
            if info.get("user_id") and not self.self_id:
                self.self_id = str(info["user_id"])
            if isinstance(info.get("nickname"), str):
                self.nickname = info["nickname"]
            self.log.info("OneBot account {} ({}) is online via {}", self.self_id, self.nickname, self.mode)

    # --- events -----------------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        post_type = event.get("post_type")
        if event.get("self_id") and not self.self_id:
            self.self_id = str(event["self_id"])
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
            self.log.debug("ignored OneBot event with post_type {!r}", post_type)

    def _on_meta(self, event: dict[str, Any]) -> None:
        """Lifecycle and heartbeat: transports that watch link health override this."""
        if event.get("meta_event_type") == "lifecycle":
            self.log.debug("OneBot lifecycle {}", event.get("sub_type"))

    async def _on_message(self, event: dict[str, Any]) -> None:
        user_id = str(event.get("user_id", ""))
        if not user_id or user_id == self.self_id:
            return
        message_type = event.get("message_type")
        if message_type == "group":
            chat_type, group_id = ChatType.GROUP, str(event.get("group_id", ""))
        elif message_type == "private":
            temp = event.get("sub_type") == "group"
            chat_type = ChatType.TEMP if temp else ChatType.PRIVATE
            group_id = (
                str(event.get("group_id") or json_object(event.get("sender")).get("group_id") or "") if temp else ""
            )
        else:
            self.log.debug("ignored a message of type {!r}", message_type)
            return
        message = decode_message(event.get("message"))
        if any(_needs_lookup(seg) for seg in message):
            # get_msg / get_forward_msg are round trips: do them off the receive loop so events keep flowing.
            self.tasks.spawn(self._completed(event, chat_type, group_id, message), name=f"{self.instance}-lookup")
            return
        await self.sink(self._message_event(event, chat_type, group_id, message))

    async def _completed(self, event: dict[str, Any], chat_type: ChatType, group_id: str, message: Message) -> None:
        """The message with quoted messages and forwarded chat logs fetched, then handed on."""
        filled: list[Any] = []
        for seg in message:
            if isinstance(seg, Quote) and _needs_lookup(seg):
                seg = await self._quoted(seg)
            elif isinstance(seg, Forward) and _needs_lookup(seg):
                seg = await self._forwarded(seg)
            filled.append(seg)
        await self.sink(self._message_event(event, chat_type, group_id, tuple(filled)))

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
        sender_id = str(sender.get("user_id") or data.get("user_id") or "")
        origin = decode_message(data.get("message"))
        return Quote(quote.message_id, sender_id, str(data.get("group_id") or ""), "", origin)

    def _message_event(
        self, event: dict[str, Any], chat_type: ChatType, group_id: str, message: Message
    ) -> MessageEvent:
        sender = json_object(event.get("sender"))
        to_me = chat_type is not ChatType.GROUP or any(
            (isinstance(seg, At) and seg.target == self.self_id)
            or (isinstance(seg, Quote) and seg.sender_id == self.self_id)
            for seg in message
        )
        return MessageEvent(
            adapter=self.instance,
            platform="qq",
            self_id=self.self_id,
            chat_type=chat_type,
            user_id=str(event.get("user_id", "")),
            group_id=group_id,
            message=message,
            message_id=str(event.get("message_id", "")),
            to_me=to_me,
            sender_name=str(sender.get("card") or sender.get("nickname") or ""),
            sender_role=ROLES.get(str(sender.get("role", "")), Role.MEMBER),
            time=float(event.get("time") or 0),
            raw=event,
        )

    async def _on_notice(self, event: dict[str, Any]) -> None:
        if event.get("notice_type") == "notify" and event.get("sub_type") == "poke":
            user_id, target = str(event.get("user_id", "")), str(event.get("target_id", ""))
            if target == self.self_id and user_id != self.self_id:
                await self.sink(
                    NoticeEvent(self.instance, "poke", user_id, str(event.get("group_id") or ""), target, raw=event)
                )
            return
        self.log.debug("ignored notice {}", event.get("notice_type"))

    async def _on_request(self, event: dict[str, Any]) -> None:
        kind = event.get("request_type")
        if kind == "friend":
            request_kind = "friend"
        elif kind == "group" and event.get("sub_type") == "invite":
            request_kind = "group_invite"
        else:
            self.log.debug("ignored request {} {}", kind, event.get("sub_type"))
            return
        await self.sink(
            RequestEvent(
                self.instance,
                request_kind,
                str(event.get("user_id", "")),
                str(event.get("group_id") or ""),
                str(event.get("comment") or ""),
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
