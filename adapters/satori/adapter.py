"""Satori (LLBot, Chronocat, Koishi): events over `/v1/events` with sn resume, messages by `/v1/message.create`."""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
from aiohttp import WSMsgType

from adapters.base import Adapter, EventSink, addressed_to, json_object
from adapters.fields import Malformed
from adapters.frames import preview
from adapters.link import FatalLinkError, Link, LinkError, LinkState, describe
from adapters.satori.codec import decode_content, encode_content
from adapters.satori.settings import SatoriSettings
from core.backoff import Backoff
from core.errors import ActionFailedError, NotConnectedError
from core.event import ChatType, MessageEvent, RequestEvent, Target
from core.message import Message, Quote

OP_EVENT, OP_PING, OP_PONG, OP_IDENTIFY, OP_READY, OP_META = 0, 1, 2, 3, 4, 5
CLOSE_INVALID_TOKEN = 4004
# Chronocat and satori-python close a wrong token with 3000 "Unauthorized" instead of the spec's 4004.
CLOSE_UNAUTHORIZED = 3000
TOKEN_CLOSES = {CLOSE_INVALID_TOKEN: "invalid token", CLOSE_UNAUTHORIZED: "Unauthorized"}
PING = json.dumps({"op": OP_PING, "body": {}})
PING_SECONDS = 10.0
# No frame at all (events or PONGs) for this long means the link is dead.
SILENCE_LIMIT = 3 * PING_SECONDS
# The server answers IDENTIFY at once; a server that never does is not a usable link.
READY_TIMEOUT = 20.0
# The reconnect schedule; tests shorten it.
RECONNECT_MIN_DELAY = 1.0
RECONNECT_MAX_DELAY = 30.0
TOKEN_REFUSED = "the Satori server refused the token ({}): set [satori] token to the server's token"
# Satori platforms whose user ids are QQ numbers: histories are shared with the other QQ protocols.
QQ_PLATFORMS = {"", "qq", "llonebot", "chronocat", "red", "onebot", "lagrange"}
# Servers are JavaScript: an sn beyond its safe integers is not one a server handed out.
_MAX_SN = 2**53


def _id(value: object) -> str:
    """An id: Satori ids are strings, so a printable, non-blank string; anything else is no id."""
    if isinstance(value, str) and value.strip() and value.isprintable() and len(value) <= 256:
        return value
    return ""


def _required_id(value: object, field: str) -> str:
    found = _id(value)
    if not found:
        raise Malformed(field)
    return found


def _object(event: dict[str, Any], field: str) -> dict[str, Any]:
    value = event.get(field)
    if not isinstance(value, dict):
        raise Malformed(field)
    return value


def _text(data: dict[str, Any], *keys: str) -> str:
    """The first non-empty string among `keys`; other types count as absent."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _is_int(value: object, expected: int) -> bool:
    # `True == 1` and `1.0 == 1` in Python; on the wire they are different things.
    return type(value) is int and value == expected


def _login_user(login: dict[str, Any]) -> str:
    return _id(json_object(login.get("user")).get("id")) or _id(login.get("self_id"))


def _platform(data: dict[str, Any]) -> str:
    value = data.get("platform")
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 64 else ""


def _seconds(milliseconds: object) -> float:
    """A Satori timestamp (ms) in seconds when plausible, else 0: the time is informational."""
    if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool) and math.isfinite(milliseconds):
        seconds = float(milliseconds) / 1000
        return seconds if 0 <= seconds < 253402300800 else 0.0
    return 0.0


class SatoriAdapter(Adapter):
    """One Satori login. `platform` and `self_id` come from READY unless the config sets them.

    The last event's `sn` is sent with every IDENTIFY (also as `sequence`), so a server that buffers events
    replays what was missed; Koishi never buffers and LLBot / Chronocat ignore it.
    Older implementations put `self_id` / `platform` at the top level instead of `login`.
    """

    protocol = "satori"
    max_text_length = 4500
    supports_forward = True

    def __init__(self, instance: str, settings: SatoriSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: SatoriSettings = settings
        self.url = settings.url.rstrip("/")
        self.ws_url = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/v1/events"
        self.token = settings.token.get_secret_value()
        self.platform = settings.platform
        self.self_id = settings.self_id
        self.sn: int | None = None
        self.http: aiohttp.ClientSession | None = None
        self.link = Link(
            f"Satori link at {self.ws_url}",
            self._connect,
            self.log,
            backoff=Backoff(min_delay=RECONNECT_MIN_DELAY, max_delay=RECONNECT_MAX_DELAY),
        )
        self._events: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "message-created": self._on_message,
            "message": self._on_message,  # the name before 1.0
            "friend-request": self._on_friend_request,
            "guild-request": self._on_guild_request,
        }

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.supervise(self.link)

    async def stop(self) -> None:
        self.link.stop()
        self._link_down()
        await super().stop()
        if self.http is not None:
            await self.http.close()

    # --- the event link ------------------------------------------------------------------------------

    async def _connect(self, link: Link) -> str:
        """One WebSocket session: IDENTIFY (with sn), READY, then events and PINGs until it ends."""
        assert self.http is not None
        try:
            ws = await self.http.ws_connect(self.ws_url, **self.ws_options)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise FatalLinkError(TOKEN_REFUSED.format(f"HTTP {exc.status}")) from None
            raise
        async with ws:
            identify: dict[str, Any] = {"token": self.token}
            if self.sn is not None:
                # `sn` is the spec's name; satori-python still reads the pre-1.0 `sequence`.
                identify["sn"] = identify["sequence"] = self.sn
            await ws.send_str(json.dumps({"op": OP_IDENTIFY, "body": identify}))
            try:
                return await self._read(ws, link)
            finally:
                self._link_down()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]], link: Link) -> str:
        """Frames until the connection ends. PINGs are sent from this loop, so no task outlives the connection."""
        loop = asyncio.get_running_loop()
        handle = functools.partial(self._on_signal, link=link)
        opened = heard = loop.time()
        next_ping = opened + PING_SECONDS
        while True:
            now = loop.time()
            if now - heard >= SILENCE_LIMIT:
                raise LinkError(f"no PONG or event for {SILENCE_LIMIT:.0f}s")
            if link.status.state is not LinkState.UP and now - opened >= READY_TIMEOUT:
                raise LinkError(f"no READY within {READY_TIMEOUT:.0f}s of IDENTIFY")
            if now >= next_ping:
                await ws.send_str(PING)
                next_ping = now + PING_SECONDS
            ready_by = opened + READY_TIMEOUT if link.status.state is not LinkState.UP else math.inf
            wake = min(next_ping, heard + SILENCE_LIMIT, ready_by)
            try:
                msg = await ws.receive(timeout=max(wake - now, 0.001))
            except TimeoutError:
                continue
            heard = loop.time()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self.receive(msg.data, handle, link.status)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                reason = TOKEN_CLOSES.get(ws.close_code or 0)
                if reason is not None:
                    raise FatalLinkError(TOKEN_REFUSED.format(f"close {ws.close_code} {reason}"))
                return f"closed ({ws.close_code})"
            elif msg.type is WSMsgType.ERROR:
                # A frame over the cap ends here too (aiohttp closes with 1009).
                error = ws.exception()
                return f"closed ({ws.close_code}, {describe(error) if error else 'error'})"

    async def _on_signal(self, signal: dict[str, Any], link: Link) -> None:
        op = signal.get("op")
        if type(op) is not int:
            self.log.debug("ignored a Satori signal without a usable op")
        elif op == OP_READY:
            try:
                self._on_ready(signal.get("body"))
            finally:
                # The server accepted the IDENTIFY whatever READY says, so the link is up either way.
                self._ready(link)
        elif op == OP_EVENT:
            await self.on_event(json_object(signal.get("body")))

    def _on_ready(self, body: object) -> None:
        logins = json_object(body).get("logins")
        usable = [login for login in logins if isinstance(login, dict)] if isinstance(logins, list) else []
        mine = [login for login in usable if self.self_id and _login_user(login) == self.self_id]
        login = (mine or usable or [{}])[0]
        # Values set in the config win; READY fills the rest.
        self.platform = self.platform or _platform(login)
        self.self_id = self.self_id or _login_user(login)
        self.nickname = _text(json_object(login.get("user")), "name", "nick") or self.nickname
        if not (self.platform and self.self_id):
            self.log.warning(
                "the Satori READY named no usable login (platform {!r}, id {!r}); set [satori] platform and self_id",
                self.platform,
                self.self_id,
            )

    def _ready(self, link: Link) -> None:
        if link.status.state is not LinkState.UP:
            self.log.info("Satori login {} on {} is ready", self.self_id or "?", self.platform or "?")
        link.up()
        self._link_up()

    # --- events --------------------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        """One event body, table-driven by its type; its sn is kept for the next IDENTIFY."""
        sn = event.get("sn", event.get("id"))
        if type(sn) is int and 0 <= sn < _MAX_SN:
            self.sn = sn if self.sn is None else max(self.sn, sn)
        kind = event.get("type")
        handler = self._events.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.log.debug("ignored Satori event {}", preview(str(kind), 40))
            return
        login = json_object(event.get("login"))
        # READY may have named no login: events say who they are for, too.
        self.self_id = self.self_id or _login_user(login) or _id(event.get("self_id"))
        self.platform = self.platform or _platform(login) or _platform(event)
        try:
            await handler(event)
        except Malformed as exc:
            self.log.warning("dropped a Satori {} event: missing or malformed {}", kind, exc)

    async def _on_message(self, event: dict[str, Any]) -> None:
        message_event = self._message(event)
        if message_event is not None:
            await self.sink(message_event)

    def _message(self, event: dict[str, Any]) -> MessageEvent | None:
        login = json_object(event.get("login"))
        self_id = _login_user(login) or _id(event.get("self_id")) or self.self_id
        user = _object(event, "user")
        user_id = _required_id(user.get("id"), "user.id")
        if user_id == self_id:
            return None  # the bot's own messages
        channel = _object(event, "channel")
        channel_id = _required_id(channel.get("id"), "channel.id")
        message_data = _object(event, "message")
        message_id = _required_id(message_data.get("id"), "message.id")  # for quoting it, and for dedupe
        content = message_data.get("content")
        if not isinstance(content, str):
            raise Malformed("message.content")
        private = _is_int(channel.get("type"), 1) or channel_id.startswith("private:")
        guild = json_object(event.get("guild"))
        member = json_object(event.get("member"))
        message = decode_content(content)
        return MessageEvent(
            adapter=self.instance,
            platform="qq" if self.platform.lower() in QQ_PLATFORMS else self.platform,
            self_id=self_id,
            chat_type=ChatType.PRIVATE if private else ChatType.GROUP,
            user_id=user_id,
            group_id="" if private else _id(guild.get("id")) or channel_id,
            message=message,
            message_id=message_id,
            to_me=private or addressed_to(message, self_id),
            sender_name=_text(member, "nick") or _text(user, "nick", "name"),
            time=_seconds(event.get("timestamp")),
            raw=event,
        )

    async def _on_friend_request(self, event: dict[str, Any]) -> None:
        user_id = _required_id(_object(event, "user").get("id"), "user.id")
        message = _object(event, "message")
        _required_id(message.get("id"), "message.id")  # the request is answered by it
        await self.sink(RequestEvent(self.instance, "friend", user_id, "", _text(message, "content"), raw=event))

    async def _on_guild_request(self, event: dict[str, Any]) -> None:
        guild_id = _required_id(_object(event, "guild").get("id"), "guild.id")
        message = _object(event, "message")
        _required_id(message.get("id"), "message.id")  # the request is answered by it
        user_id = _id(json_object(event.get("user")).get("id"))
        await self.sink(RequestEvent(self.instance, "group_invite", user_id, guild_id, raw=event))

    # --- actions -------------------------------------------------------------------------------------

    async def call(self, method: str, body: dict[str, Any]) -> Any:
        """POST /v1/<method> with the login headers; the JSON answer. Raises NotConnectedError / ActionFailedError."""
        assert self.http is not None
        headers = {"Satori-Platform": self.platform, "Satori-User-ID": self.self_id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self.http.post(
                f"{self.url}/v1/{method}", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                text = await response.text(errors="replace")
                if response.status != 200:
                    raise ActionFailedError(method, response.status, text[:200])
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            raise NotConnectedError(f"Satori unreachable: {type(exc).__name__}") from None
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise ActionFailedError(method, "?", "the answer is not JSON") from None

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        if quote:
            message = (Quote(quote), *message)
        channel = target.group_id if target.chat_type is ChatType.GROUP else f"private:{target.user_id}"
        created = await self.call("message.create", {"channel_id": channel, "content": encode_content(message)})
        first = created[0] if isinstance(created, list) and created and isinstance(created[0], dict) else {}
        return _id(first.get("id")) or None

    async def answer_request(self, event: RequestEvent, approve: bool) -> None:
        message_id = _id(json_object(event.raw.get("message")).get("id")) or _id(event.raw.get("message_id"))
        method = "friend.approve" if event.kind == "friend" else "guild.approve"
        await self.call(method, {"message_id": message_id, "approve": approve, "comment": ""})
