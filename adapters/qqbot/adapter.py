"""The official QQ bot API (QQ 开放平台): access token, gateway shards or webhook, group and C2C replies."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from adapters.base import Adapter, EventSink, json_object, parse_frame
from adapters.link import keep_connected
from adapters.listen import listen
from adapters.qqbot.resource import ResourceServer, Uploader, load_uploader, public_url
from adapters.qqbot.settings import QQBotSettings
from adapters.qqbot.signing import key_from_secret, validation_answer, verify
from core.errors import ActionFailedError, AdapterError, NotConnectedError
from core.event import ChatType, MessageEvent, Target
from core.message import Image, Message, Text, describe

GROUP_AND_C2C_EVENT = 1 << 25
TOKEN_MARGIN = 60.0  # the platform only hands out a new token in the last 60 s of the old one
SHARD_STAGGER = 5.0  # seed 002: shards must not all identify at once
REPLY_WINDOW = {ChatType.GROUP: 5 * 60.0, ChatType.PRIVATE: 60 * 60.0}
MAX_REPLIES = 5  # passive replies per incoming message
RESUME_CODES = {4008, 4009}
REIDENTIFY_CODES = {4006, 4007, 9001, 9005, *range(4900, 4914)}
FATAL_CODES = {4001, 4002, 4010, 4011, 4012, 4013, 4014, 4914, 4915}
ERRORS = {
    22009: "the reply limit for this message is used up (5 replies per message)",
    40054005: "a reply with this msg_seq was already sent",
    40054010: "the text contains a URL that is not registered in q.qq.com → 开发设置 → 消息URL配置",
    304082: "Tencent could not fetch the media URL",
    304083: "Tencent could not fetch the media URL",
    11241: "the access token was refused",
}
# Links must be registered with the platform; anything that looks like one is made unlinkable.
_URL = re.compile(r"(?:https?://)?(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\S*")


def unlinkable(text: str) -> str:
    """`text` with URLs and bare domains broken (scheme removed, dots made full-width)."""
    return _URL.sub(lambda m: re.sub(r"^https?://", "", m.group(0)).replace(".", "。"), text)


@dataclass(slots=True)
class _Incoming:
    """The message a reply answers: its id, when it came, and how many replies it has had."""

    msg_id: str
    received: float
    replies: int = 0


class QQBotAdapter(Adapter):
    """One bot of the QQ open platform. Replies are passive (to the user's last message) with
    msg_seq 1, 2, 3…; a reply past the platform's window is logged and dropped, not failed silently."""

    protocol = "qqbot"
    max_text_length = 2000
    max_replies = MAX_REPLIES
    supports_forward = False

    def __init__(self, instance: str, settings: QQBotSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: QQBotSettings = settings
        self.appid = settings.appid
        self.secret = settings.secret.get_secret_value()
        self._token = ""
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._up_shards: set[int] = set()
        self._uploader: Uploader | None = None
        self._resources: ResourceServer | None = None
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        if self.settings.uploader:
            self._uploader = load_uploader(self.settings.uploader)
        if self.settings.resource.public_url:
            self._resources = ResourceServer(self.settings.resource)
            await self._resources.start()
        if self.settings.mode == "webhook":
            app = web.Application(client_max_size=4 * 1024 * 1024)
            app.router.add_post(self.settings.webhook_path, self._webhook)
            self._runner, self.port = await listen(app, self.settings.webhook_host, self.settings.webhook_port)
            self.key = key_from_secret(self.secret)
            self.log.info("receiving QQ bot events on port {} at {}", self.port, self.settings.webhook_path)
            self._link_up()
        else:
            shards = (
                [self.settings.shard_index] if self.settings.shard_index is not None else range(self.settings.shards)
            )
            self.tasks.spawn(self._start_shards(list(shards)), name=f"{self.instance}-shards")

    async def stop(self) -> None:
        self._stopping = True
        self._link_down()
        await super().stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._resources is not None:
            await self._resources.stop()
        if self._session is not None:
            await self._session.close()

    # --- token and REST ---------------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token, fetched again shortly before it expires. Raises AdapterError."""
        async with self._token_lock:
            if self._token and time.monotonic() < self._token_expires - TOKEN_MARGIN:
                return self._token
            assert self._session is not None
            try:
                async with self._session.post(
                    self.settings.token_url,
                    json={"appId": self.appid, "clientSecret": self.secret},
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                raise NotConnectedError(f"access token: {type(exc).__name__}") from None
            token = body.get("access_token") if isinstance(body, dict) else None
            if not token:
                code = body.get("code") if isinstance(body, dict) else "?"
                raise AdapterError(f"access token refused (code {code}): check [qqbot] appid and secret")
            self._token = str(token)
            self._token_expires = time.monotonic() + float(body.get("expires_in") or 7200)  # a string on the wire
            return self._token

    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One REST call; its JSON. Raises NotConnectedError or ActionFailedError with a clear reason."""
        assert self._session is not None
        headers = {"Authorization": f"QQBot {await self.token()}", "X-Union-Appid": self.appid}
        try:
            async with self._session.request(
                method,
                self.settings.base_url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=20),
            ) as response:
                data = await response.json(content_type=None)
                status, trace = response.status, response.headers.get("X-Tps-trace-Id", "")
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            raise NotConnectedError(f"QQ API unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise ActionFailedError(path, "?", "the answer is not JSON") from None
        if status >= 300 or (isinstance(data, dict) and data.get("code") and "id" not in data):
            code = data.get("code", status) if isinstance(data, dict) else status
            message = str(data.get("message", "")) if isinstance(data, dict) else ""
            reason = ERRORS.get(code, message) if isinstance(code, int) else message
            raise ActionFailedError(path, code, f"{reason} (trace {trace})" if trace else reason)
        return data

    # --- gateway ----------------------------------------------------------------------------------

    async def _start_shards(self, shards: list[int]) -> None:
        for position, shard in enumerate(shards):
            if position:
                await asyncio.sleep(SHARD_STAGGER)
            link = _Shard(self, shard)
            what = f"QQ gateway shard {shard}"
            self.tasks.spawn(keep_connected(what, link.connect_once, link.finished, self.log), name=what)

    def _shard_state(self, shard: int, up: bool) -> None:
        if up:
            self._up_shards.add(shard)
            self._link_up()
        else:
            self._up_shards.discard(shard)
            if not self._up_shards:
                self._link_down()

    # --- webhook ----------------------------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Signature-Ed25519", "")
        timestamp = request.headers.get("X-Signature-Timestamp", "")
        try:
            payload = json.loads(body)
        except ValueError:
            return web.Response(status=400)
        if not isinstance(payload, dict):
            return web.Response(status=400)
        if payload.get("op") == 13:
            data = json_object(payload.get("d"))
            answer = validation_answer(self.key, str(data.get("plain_token", "")), str(data.get("event_ts", "")))
            return web.json_response(answer)
        if not verify(self.key, signature, timestamp, body):
            self.log.warning("refused a QQ webhook call from {}: bad signature", request.remote)
            return web.Response(status=401)
        if payload.get("op") == 0:
            self.tasks.spawn(self.dispatch(payload), name=f"{self.instance}-event")
        return web.json_response({"op": 12})

    # --- events -----------------------------------------------------------------------------------

    async def dispatch(self, payload: dict[str, Any]) -> None:
        """One op 0 event (from a shard or the webhook)."""
        kind, data = payload.get("t"), json_object(payload.get("d"))
        if kind not in ("GROUP_AT_MESSAGE_CREATE", "C2C_MESSAGE_CREATE"):
            self.log.debug("ignored QQ event {}", kind)
            return
        author = json_object(data.get("author"))
        group = kind == "GROUP_AT_MESSAGE_CREATE"
        user = str(author.get("member_openid" if group else "user_openid") or author.get("id") or "")
        msg_id = str(data.get("id") or "")
        if not user or not msg_id:
            self.log.warning("dropped a {} without author or id", kind)
            return
        group_id = str(data.get("group_openid") or "") if group else ""
        # The @bot mention is removed by the platform, leaving a leading space.
        segments: list[Any] = [Text(str(data.get("content") or "").strip())]
        for attachment in data.get("attachments") or []:
            if isinstance(attachment, dict) and str(attachment.get("content_type", "")).startswith("image"):
                url = str(attachment.get("url") or "")
                segments.append(Image(url=url if url.startswith("http") else f"https://{url}"))
        chat = ChatType.GROUP if group else ChatType.PRIVATE
        self._incoming[(group_id or "", user)] = _Incoming(msg_id, time.monotonic())
        await self.sink(
            MessageEvent(
                adapter=self.instance,
                platform="qqbot",
                self_id=self.appid,
                chat_type=chat,
                user_id=user,
                group_id=group_id,
                message=tuple(seg for seg in segments if not isinstance(seg, Text) or seg.text),
                message_id=msg_id,
                to_me=True,
                raw=data,
            )
        )

    # --- sending ----------------------------------------------------------------------------------

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        group = target.chat_type is ChatType.GROUP
        incoming = self._incoming.get((target.group_id if group else "", target.user_id))
        if incoming is None:
            self.log.error("no message to reply to for {}: the platform allows passive replies only", target.describe())
            return None
        window = REPLY_WINDOW.get(target.chat_type, REPLY_WINDOW[ChatType.PRIVATE])
        age = time.monotonic() - incoming.received
        if age > window:
            self.log.error(
                "the answer to {} came {:.0f}s after the question, past the platform's {:.0f}-minute reply window; "
                "it was not sent",
                target.describe(),
                age,
                window / 60,
            )
            return None
        if incoming.replies >= MAX_REPLIES:
            self.log.error(
                "reply {} to {} exceeds the platform's 5 replies per message; dropped",
                incoming.replies + 1,
                target.describe(),
            )
            return None
        incoming.replies += 1
        path = f"/v2/groups/{target.group_id}/messages" if group else f"/v2/users/{target.user_id}/messages"
        body: dict[str, Any] = {"msg_id": incoming.msg_id, "msg_seq": incoming.replies}
        image = next((seg for seg in message if isinstance(seg, Image)), None)
        url = await self._picture_url(image) if image is not None else ""
        if url:
            kind = "groups" if group else "users"
            target_id = target.group_id if group else target.user_id
            media = {"file_type": 1, "url": url, "srv_send_msg": False}
            upload = await self.api("POST", f"/v2/{kind}/{target_id}/files", media)
            body |= {"msg_type": 7, "content": " ", "media": {"file_info": json_object(upload).get("file_info", "")}}
        else:
            body |= {"msg_type": 0, "content": unlinkable(describe(message))}
        data = await self.api("POST", path, body)
        return str(json_object(data).get("id") or "") or None

    async def _picture_url(self, image: Image) -> str:
        """A URL Tencent can fetch the picture from ("" when there is none: the text is sent instead)."""
        if image.url.startswith(("http://", "https://")):
            return image.url
        try:
            if image.base64:
                data = base64.b64decode(image.base64)
            else:
                data = await asyncio.to_thread(Path(image.path).read_bytes)
            return await public_url(data, self._uploader, self._resources)
        except (AdapterError, OSError, ValueError) as exc:
            self.log.warning("a picture could not be sent: {}; sending text", exc)
            return ""


class _Shard:
    """One gateway connection: Hello, Identify or Resume, heartbeats with an ACK watchdog, dispatches."""

    def __init__(self, adapter: QQBotAdapter, index: int) -> None:
        self.adapter = adapter
        self.index = index
        self.session_id = ""
        self.seq: int | None = None
        self.fatal = False

    def finished(self) -> bool:
        return self.fatal or self.adapter._stopping

    async def connect_once(self) -> tuple[bool, str]:
        adapter = self.adapter
        gateway = json_object(await adapter.api("GET", "/gateway/bot"))
        url = str(gateway.get("url") or "")
        assert adapter._session is not None
        async with adapter._session.ws_connect(url, max_msg_size=4 * 1024 * 1024) as ws:
            ready = False
            try:
                hello = await ws.receive_json(timeout=15)
                interval = float(json_object(json_object(hello).get("d")).get("heartbeat_interval") or 45000) / 1000
                token = f"QQBot {await adapter.token()}"
                if self.session_id and self.seq is not None:
                    await ws.send_json({"op": 6, "d": {"token": token, "session_id": self.session_id, "seq": self.seq}})
                else:
                    identify = {
                        "token": token,
                        "intents": GROUP_AND_C2C_EVENT,
                        "shard": [self.index, adapter.settings.shards],
                        "properties": {},
                    }
                    await ws.send_json({"op": 2, "d": identify})
                acked = asyncio.Event()
                acked.set()
                beat = adapter.tasks.spawn(self._heartbeat(ws, interval, acked), name=f"{adapter.instance}-heartbeat")
                try:
                    while True:
                        msg = await ws.receive()
                        if msg.type is not WSMsgType.TEXT:
                            break
                        payload = parse_frame(adapter.log, msg.data)
                        if payload is None:
                            continue
                        ready = await self._on_payload(ws, payload, acked) or ready
                finally:
                    beat.cancel()
            finally:
                adapter._shard_state(self.index, False)
        return ready, self._after_close(ws.close_code)

    async def _on_payload(
        self, ws: aiohttp.ClientWebSocketResponse, payload: dict[str, Any], acked: asyncio.Event
    ) -> bool:
        adapter = self.adapter
        op = payload.get("op")
        if isinstance(payload.get("s"), int):
            self.seq = payload["s"]
        if op == 11:
            acked.set()
        elif op == 7:
            await ws.close()  # the platform asks for a reconnect: resume
        elif op == 9:
            self.session_id, self.seq = "", None  # invalid session: identify again
            await ws.close()
        elif op == 0:
            kind = payload.get("t")
            if kind in ("READY", "RESUMED"):
                data = json_object(payload.get("d"))
                self.session_id = str(data.get("session_id") or self.session_id)
                adapter.log.info("QQ gateway shard {} {}", self.index, "ready" if kind == "READY" else "resumed")
                adapter._shard_state(self.index, True)
                return True
            await adapter.dispatch(payload)
        return False

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float, acked: asyncio.Event) -> None:
        while not ws.closed:
            await asyncio.sleep(interval)
            if not acked.is_set():
                self.adapter.log.warning("QQ gateway shard {}: no heartbeat ACK; reconnecting", self.index)
                await ws.close()
                return
            acked.clear()
            await ws.send_json({"op": 1, "d": self.seq})

    def _after_close(self, code: int | None) -> str:
        """Sort the close code: resume, identify again, or stop for good."""
        if code in FATAL_CODES:
            self.fatal = True
            self.adapter.log.error(
                "QQ gateway shard {} closed with {}: the platform will not accept this bot (check intents, "
                "the sandbox setting and the bot's status on q.qq.com); not reconnecting",
                self.index,
                code,
            )
            return f"closed ({code}), fatal"
        if code == 4004:
            self.adapter._token = ""  # the token was refused: fetch a fresh one
            return "closed (4004): token refused, fetching a new one"
        if code in REIDENTIFY_CODES:
            self.session_id, self.seq = "", None
            return f"closed ({code}), identifying again"
        return f"closed ({code}), resuming" if self.session_id else f"closed ({code})"
