"""Satori (LLBot, Chronocat, Koishi): events over `/v1/events` with IDENTIFY/READY/PING and sn resume,
messages by `POST /v1/message.create`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from adapters.base import Adapter, EventSink, json_object, parse_frame
from adapters.link import keep_connected
from adapters.satori.codec import decode_content, encode_content
from adapters.satori.settings import SatoriSettings
from core.errors import ActionFailedError, NotConnectedError
from core.event import ChatType, MessageEvent, RequestEvent, Target
from core.message import At, Message, Quote

PING_SECONDS = 10.0
# No frame at all (events or PONGs) for this long means the link is dead.
SILENCE_LIMIT = 3 * PING_SECONDS
MAX_FRAME = 16 * 1024 * 1024
# Satori platforms whose user ids are QQ numbers: histories are shared with the other QQ protocols.
QQ_PLATFORMS = {"", "qq", "llonebot", "chronocat", "red", "onebot", "lagrange"}


class SatoriAdapter(Adapter):
    """One Satori login. `platform` and `self_id` come from READY unless the config sets them.

    The last event's `sn` is sent with every IDENTIFY, so a reconnect replays what was missed.
    Older implementations put `self_id` / `platform` at the top level instead of `login`.
    """

    protocol = "satori"
    max_text_length = 4500
    supports_forward = True

    def __init__(self, instance: str, settings: SatoriSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: SatoriSettings = settings
        self.url = settings.url.rstrip("/")
        self.token = settings.token.get_secret_value()
        self.platform = settings.platform
        self.self_id = settings.self_id
        self.sn: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        what = f"Satori link at {self.url}/v1/events"
        self.tasks.spawn(keep_connected(what, self._link, lambda: self._stopping, self.log), name=self.instance)

    async def stop(self) -> None:
        self._stopping = True
        self._link_down()
        await super().stop()
        if self._session is not None:
            await self._session.close()

    async def _link(self) -> tuple[bool, str]:
        """One WebSocket session: IDENTIFY (with sn), READY, then events and PINGs until it ends."""
        assert self._session is not None
        ws_url = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/v1/events"
        async with self._session.ws_connect(ws_url, max_msg_size=MAX_FRAME) as ws:
            identify: dict[str, Any] = {"token": self.token}
            if self.sn is not None:
                identify["sn"] = self.sn
            await ws.send_str(json.dumps({"op": 3, "body": identify}))
            pinger = self.tasks.spawn(self._ping(ws), name=f"{self.instance}-ping")
            try:
                return await self._receive(ws)
            finally:
                pinger.cancel()
                self._link_down()

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(PING_SECONDS)
            try:
                await ws.send_str('{"op":1,"body":{}}')
            except (ConnectionError, RuntimeError):
                return

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[bool, str]:
        ready = False
        while True:
            try:
                msg = await ws.receive(timeout=SILENCE_LIMIT)
            except TimeoutError:
                await ws.close()
                return ready, f"no PONG or event for {SILENCE_LIMIT:.0f}s"
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                code = ws.close_code
                hint = " (invalid token: check [satori] token)" if code == 4004 else ""
                return ready, f"closed ({code}){hint}"
            if msg.type is not WSMsgType.TEXT:
                continue
            signal = parse_frame(self.log, msg.data)
            if signal is None:
                continue
            op, body = signal.get("op"), signal.get("body")
            body = body if isinstance(body, dict) else {}
            if op == 4:
                ready = True
                self._on_ready(body)
            elif op == 0:
                try:
                    await self._on_event(body)
                except Exception:
                    self.log.exception("dropped a Satori event that could not be handled")

    def _on_ready(self, body: dict[str, Any]) -> None:
        logins = [login for login in body.get("logins") or [] if isinstance(login, dict)]
        login = next((x for x in logins if _login_user(x) == self.self_id), logins[0] if logins else {})
        # Values set in the config win; READY fills the rest.
        self.platform = self.platform or str(login.get("platform") or "")
        self.self_id = self.self_id or _login_user(login)
        user = json_object(login.get("user"))
        self.nickname = str(user.get("name") or user.get("nick") or self.nickname)
        self.log.info("Satori login {} on {} is ready", self.self_id, self.platform)
        self._link_up()

    async def _on_event(self, event: dict[str, Any]) -> None:
        sn = event.get("sn", event.get("id"))
        if isinstance(sn, int):
            self.sn = sn if self.sn is None else max(self.sn, sn)
        kind = event.get("type")
        if kind in ("message-created", "message"):
            message_event = self._message(event)
            if message_event is not None:
                await self.sink(message_event)
        elif kind in ("friend-request", "guild-request"):
            user = json_object(event.get("user"))
            guild = json_object(event.get("guild"))
            request = "friend" if kind == "friend-request" else "group_invite"
            await self.sink(
                RequestEvent(self.instance, request, str(user.get("id", "")), str(guild.get("id", "")), raw=event)
            )
        else:
            self.log.debug("ignored Satori event {}", kind)

    def _message(self, event: dict[str, Any]) -> MessageEvent | None:
        login = json_object(event.get("login"))
        self_id = _login_user(login) or str(event.get("self_id") or "") or self.self_id
        user = json_object(event.get("user"))
        user_id = str(user.get("id", ""))
        if not user_id or user_id == self_id:
            return None  # the bot's own messages
        channel = json_object(event.get("channel"))
        channel_id = str(channel.get("id", ""))
        private = channel.get("type") == 1 or channel_id.startswith("private:")
        guild = json_object(event.get("guild"))
        message_data = json_object(event.get("message"))
        message = decode_content(str(message_data.get("content") or ""))
        member = json_object(event.get("member"))
        to_me = private or any(
            (isinstance(seg, At) and seg.target == self_id) or (isinstance(seg, Quote) and seg.sender_id == self_id)
            for seg in message
        )
        return MessageEvent(
            adapter=self.instance,
            platform="qq" if self.platform.lower() in QQ_PLATFORMS else self.platform,
            self_id=self_id,
            chat_type=ChatType.PRIVATE if private else ChatType.GROUP,
            user_id=user_id,
            group_id="" if private else str(guild.get("id") or channel_id),
            message=message,
            message_id=str(message_data.get("id", "")),
            to_me=to_me,
            sender_name=str(member.get("nick") or user.get("nick") or user.get("name") or ""),
            time=float(event.get("timestamp") or 0) / 1000,
            raw=event,
        )

    async def call(self, method: str, body: dict[str, Any]) -> Any:
        """POST /v1/<method> with the login headers; the JSON answer. Raises NotConnectedError / ActionFailedError."""
        assert self._session is not None
        headers = {"Satori-Platform": self.platform, "Satori-User-ID": self.self_id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._session.post(
                f"{self.url}/v1/{method}", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                text = await response.text()
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
        return str(first["id"]) if "id" in first else None

    async def answer_request(self, event: RequestEvent, approve: bool) -> None:
        message_id = str(json_object(event.raw.get("message")).get("id") or event.raw.get("message_id") or "")
        method = "friend.approve" if event.kind == "friend" else "guild.approve"
        await self.call(method, {"message_id": message_id, "approve": approve, "comment": ""})


def _login_user(login: dict[str, Any]) -> str:
    user = json_object(login.get("user"))
    return str(user.get("id") or login.get("self_id") or "")
