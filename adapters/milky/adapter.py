"""Milky (LLBot): API as `POST {url}/api/<name>`, events over WS or SSE at `/event`, or by webhook."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from adapters.base import Adapter, EventSink, json_object, parse_frame
from adapters.link import keep_connected
from adapters.listen import listen
from adapters.milky.codec import decode_segments, encode_segments, message_segments
from adapters.milky.settings import MilkySettings
from adapters.onebot.base import token_matches
from adapters.sse import sse_data
from core.backoff import Backoff
from core.errors import ActionFailedError, AdapterError, NotConnectedError
from core.event import ChatType, MessageEvent, NoticeEvent, RequestEvent, Role, Target
from core.message import At, Message, Quote

MAX_FRAME = 16 * 1024 * 1024
API_TIMEOUT = aiohttp.ClientTimeout(total=30)
SCENES = {"friend": ChatType.PRIVATE, "group": ChatType.GROUP, "temp": ChatType.TEMP}
ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN}
# Milky names for answering requests (IR 1.x).
FRIEND_ANSWER = {True: "accept_friend_request", False: "reject_friend_request"}
INVITE_ANSWER = {True: "accept_group_invitation", False: "reject_group_invitation"}


class MilkyAdapter(Adapter):
    """One Milky account. The API is plain HTTP; events come by `event_transport`."""

    protocol = "milky"
    max_text_length = 4500
    supports_forward = True

    def __init__(self, instance: str, settings: MilkySettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: MilkySettings = settings
        self.url = settings.url.rstrip("/")
        self.token = settings.access_token.get_secret_value()
        self.self_id = ""
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.port: int | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        transport = self.settings.event_transport
        if transport == "webhook":
            await self._listen()
            self.tasks.spawn(self._login_until_up(), name=f"{self.instance}-login")
        else:
            what = f"Milky event stream ({transport}) at {self.url}/event"
            self.tasks.spawn(keep_connected(what, self._events, lambda: self._stopping, self.log), name=self.instance)
        self.log.info("using Milky at {} (events by {})", self.url, transport)

    async def stop(self) -> None:
        self._stopping = True
        self._link_down()
        await super().stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(self, api: str, params: dict[str, Any] | None = None) -> Any:
        """POST /api/<api>; its `data`. Raises NotConnectedError or ActionFailedError (retcode, message)."""
        assert self._session is not None
        try:
            async with self._session.post(
                f"{self.url}/api/{api}",
                json=params or {},
                headers=self._auth(),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                if response.status == 401:
                    raise ActionFailedError(api, 401, "unauthorized (check [milky] access_token)")
                if response.status != 200:
                    raise ActionFailedError(api, response.status, "HTTP error")
                body = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            raise NotConnectedError(f"Milky unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise ActionFailedError(api, "?", "the answer is not JSON") from None
        if not isinstance(body, dict) or body.get("status") != "ok":
            retcode = body.get("retcode", "?") if isinstance(body, dict) else "?"
            message = str(body.get("message", "")) if isinstance(body, dict) else ""
            raise ActionFailedError(api, retcode if isinstance(retcode, int | str) else "?", message)
        return body.get("data")

    async def _login(self) -> bool:
        try:
            info = await self.call("get_login_info")
        except AdapterError as exc:
            self.log.warning("get_login_info failed: {}", exc)
            return False
        if isinstance(info, dict):
            self.self_id = str(info.get("uin") or self.self_id)
            self.nickname = str(info.get("nickname") or self.nickname)
        self.log.info("Milky account {} ({}) is online", self.self_id, self.nickname)
        return True

    async def _events(self) -> tuple[bool, str]:
        """One event connection (WS or SSE) until it ends."""
        assert self._session is not None
        url = f"{self.url}/event"
        if self.settings.event_transport == "ws":
            async with self._session.ws_connect(url, headers=self._auth(), heartbeat=30, max_msg_size=MAX_FRAME) as ws:
                await self._connected()
                async for msg in ws:
                    if msg.type is WSMsgType.TEXT:
                        await self._on_text(msg.data)
                self._link_down()
                return True, f"closed ({ws.close_code})"
        async with self._session.get(
            url,
            headers={**self._auth(), "Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        ) as response:
            if response.status != 200:
                return False, f"HTTP {response.status}" + (" (check access_token)" if response.status == 401 else "")
            await self._connected()
            async for data in sse_data(response.content):
                await self._on_text(data)
            self._link_down()
            return True, "stream ended"

    async def _connected(self) -> None:
        self.log.info("Milky event stream connected ({})", self.settings.event_transport)
        self._link_up()
        self.tasks.spawn(self._login(), name=f"{self.instance}-login")

    async def _login_until_up(self) -> None:
        """Webhook mode has no stream to watch: the link is up once the API answers."""
        backoff = Backoff(min_delay=1.0, max_delay=30.0)
        for _ in itertools.count():
            if self._stopping or await self._login():
                break
            await asyncio.sleep(backoff.next_delay())
        self._link_up()

    async def _listen(self) -> None:
        host, port = self.settings.webhook_host, self.settings.webhook_port
        app = web.Application(client_max_size=MAX_FRAME)
        app.router.add_post("/{tail:.*}", self._webhook)
        self._runner, self.port = await listen(app, host, port)
        if host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            self.log.warning("SECURITY: the Milky webhook listens on {} without [milky] access_token", host)

    async def _webhook(self, request: web.Request) -> web.Response:
        if self.token and not token_matches(self.token, request.headers.get("Authorization", ""), ""):
            self.log.warning("refused a Milky webhook call from {}: wrong or missing token", request.remote)
            return web.Response(status=401)
        text = await request.text()
        self.tasks.spawn(self._on_text(text), name=f"{self.instance}-event")
        return web.Response(status=204)

    async def _on_text(self, text: str) -> None:
        event = parse_frame(self.log, text)
        if event is None:
            return
        try:
            await self._on_event(event)
        except Exception:
            self.log.exception("dropped a Milky event that could not be handled")

    async def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("self_id") and not self.self_id:
            self.self_id = str(event["self_id"])
        kind = event.get("event_type")
        data = json_object(event.get("data"))
        if kind == "message_receive":
            message_event = self._message(data)
            if message_event is not None:
                await self.sink(message_event)
        elif kind == "friend_request":
            user = str(data.get("initiator_id", ""))
            await self.sink(RequestEvent(self.instance, "friend", user, "", str(data.get("comment") or ""), raw=data))
        elif kind == "group_invitation":
            group, user = str(data.get("group_id", "")), str(data.get("initiator_id", ""))
            await self.sink(RequestEvent(self.instance, "group_invite", user, group, "", raw=data))
        elif kind in ("group_nudge", "friend_nudge"):
            await self._on_nudge(kind, data)
        elif kind == "bot_offline":
            self.log.warning("the Milky account went offline: {}", data.get("reason", ""))
        else:
            self.log.debug("ignored Milky event {}", kind)

    def _message(self, data: dict[str, Any]) -> MessageEvent | None:
        scene = SCENES.get(str(data.get("message_scene")))
        sender = str(data.get("sender_id", ""))
        if scene is None or not sender or sender == self.self_id:
            return None  # unknown scenes, and the bot's own messages
        peer = str(data.get("peer_id", ""))
        group = json_object(data.get("group"))
        member = json_object(data.get("group_member"))
        friend = json_object(data.get("friend"))
        group_id = (
            peer if scene is ChatType.GROUP else str(group.get("group_id") or "") if scene is ChatType.TEMP else ""
        )
        message = decode_segments(message_segments(data))
        to_me = scene is not ChatType.GROUP or any(
            (isinstance(seg, At) and seg.target == self.self_id)
            or (isinstance(seg, Quote) and seg.sender_id == self.self_id)
            for seg in message
        )
        return MessageEvent(
            adapter=self.instance,
            platform="qq",
            self_id=self.self_id,
            chat_type=scene,
            user_id=sender,
            group_id=group_id,
            message=message,
            message_id=str(data.get("message_seq", "")),
            to_me=to_me,
            sender_name=str(member.get("card") or member.get("nickname") or friend.get("nickname") or ""),
            sender_role=ROLES.get(str(member.get("role", "")), Role.MEMBER),
            time=float(data.get("time") or 0),
            raw=data,
        )

    async def _on_nudge(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "group_nudge":
            sender, receiver = str(data.get("sender_id", "")), str(data.get("receiver_id", ""))
            if receiver == self.self_id and sender != self.self_id:
                await self.sink(
                    NoticeEvent(self.instance, "poke", sender, str(data.get("group_id", "")), receiver, raw=data)
                )
        elif data.get("is_self_receive") and not data.get("is_self_send"):
            user = str(data.get("user_id", ""))
            await self.sink(NoticeEvent(self.instance, "poke", user, "", self.self_id, raw=data))

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
