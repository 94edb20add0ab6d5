"""The official QQ bot API (QQ 开放平台): access token, REST, passive group and C2C replies."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from adapters.base import Adapter, EventSink
from adapters.frames import MAX_BODY, parse_frame
from adapters.link import NETWORK_ERRORS, FatalLinkError, LinkError, describe
from adapters.qqbot import codec
from adapters.qqbot.resource import ResourceServer, Uploader, load_uploader, public_url
from adapters.qqbot.settings import QQBotSettings
from adapters.qqbot.transports import GatewayShard, Webhook
from core.backoff import Backoff
from core.errors import ActionFailedError, AdapterError, NotConnectedError
from core.event import ChatType, Target
from core.message import Image, Message, Voice

TOKEN_MARGIN = 60.0  # the platform only hands out a new token in the last 60 s of the old one
SHARD_STAGGER = 5.0  # seed 002: shards must not all identify at once
RECONNECT_DELAYS = (1.0, 30.0)  # first and longest wait between a shard's attempts (tests shorten them)
REPLY_WINDOW = {ChatType.GROUP: 5 * 60.0, ChatType.PRIVATE: 60 * 60.0}
MAX_REPLIES = 5  # passive replies per incoming message
KNOWN_IDS = 4096
# Rich media by kind: the upload's `file_type` (1 picture png/jpg, 3 voice silk) and the type it is served as.
MEDIA_TYPES: dict[type, tuple[int, str]] = {Image: (1, "image/png"), Voice: (3, "audio/silk")}
TOKEN_INVALID = 11241
ERRORS = {
    22009: "the reply limit for this message is used up (5 replies per message)",
    40054005: "a reply with this msg_seq was already sent",
    40054010: "the text contains a URL that is not registered in q.qq.com → 开发设置 → 消息URL配置",
    304082: "Tencent could not fetch the media URL",
    304083: "Tencent could not fetch the media URL",
    TOKEN_INVALID: "the access token was refused",
}


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
    # Signed callbacks can be captured and replayed: the manager remembers event ids in the database.
    durable_dedupe: ClassVar[bool] = True

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
        self._known: OrderedDict[str, None] = OrderedDict()  # msg ids already delivered to the sink
        self._up_shards: set[int] = set()
        self._uploader: Uploader | None = None
        self._resources: ResourceServer | None = None
        self.shards: list[GatewayShard] = []
        self.webhook: Webhook | None = None
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        if self.settings.uploader:
            self._uploader = load_uploader(self.settings.uploader)
        if self.settings.resource.public_url:
            self._resources = ResourceServer(self.settings.resource)
            await self._resources.start()
            self.listener_status("QQ picture server")
        if self.settings.mode == "webhook":
            self.webhook = Webhook(self)
            await self.webhook.start()
            self.port = self.webhook.port
            self.log.info("receiving QQ bot events on port {} at {}", self.port, self.settings.webhook_path)
            self._link_up()
            return
        index = self.settings.shard_index
        for position, shard in enumerate([index] if index is not None else range(self.settings.shards)):
            backoff = Backoff(min_delay=RECONNECT_DELAYS[0], max_delay=RECONNECT_DELAYS[1])
            self.shards.append(GatewayShard(self, shard, backoff, first_delay=position * SHARD_STAGGER))
            self.supervise(self.shards[-1].link)

    async def stop(self) -> None:
        for shard in self.shards:
            shard.link.stop()
        self._link_down()
        await super().stop()
        if self.webhook is not None:
            await self.webhook.stop()
        if self._resources is not None:
            await self._resources.stop()
        if self._session is not None:
            await self._session.close()

    def http(self) -> aiohttp.ClientSession:
        """The adapter's HTTP client (for REST and the gateway); exists between start and stop."""
        assert self._session is not None, "QQBotAdapter.start() not called"
        return self._session

    def shard_state(self, shard: int, up: bool) -> None:
        """A shard became ready or went down: replies can go out while any shard is up."""
        if up:
            self._up_shards.add(shard)
            self._link_up()
        else:
            self._up_shards.discard(shard)
            if not self._up_shards:
                self._link_down()

    # --- token and REST ---------------------------------------------------------------------------

    def forget_token(self) -> None:
        """The platform refused the token: the next call fetches a new one."""
        self._token, self._token_expires = "", 0.0

    async def token(self) -> str:
        """A valid access token, fetched again shortly before it expires.

        Raises FatalLinkError naming `[qqbot] appid`/`secret` when the platform refuses them, and
        LinkError when the token endpoint cannot be reached or answers something else.
        """
        async with self._token_lock:
            if self._token and time.monotonic() < self._token_expires - TOKEN_MARGIN:
                return self._token
            try:
                async with self.http().post(
                    self.settings.token_url,
                    json={"appId": self.appid, "clientSecret": self.secret},
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as response:
                    status = response.status
                    raw = await response.read()
            except NETWORK_ERRORS as exc:
                raise LinkError(f"access token: {describe(exc)}") from None
            body = parse_frame(self.log, raw, MAX_BODY) or {}
            token = body.get("access_token")
            if isinstance(token, str) and token:
                self._token = token
                self._token_expires = time.monotonic() + _seconds(body.get("expires_in"))
                return token
            code = body.get("code")
            if code is not None and status < 500 and status != 429:
                raise FatalLinkError(
                    f"QQ access token refused (code {code}{self._said(body)}): check [qqbot] appid and secret"
                )
            raise LinkError(f"access token: HTTP {status}" + (f", code {code}" if code is not None else ""))

    def _said(self, body: dict[str, Any]) -> str:
        """The platform's message for a log line: printable, short, and never the secret."""
        message = "".join(ch for ch in codec.text(body.get("message")) if ch.isprintable())[:100]
        if self.secret:
            message = message.replace(self.secret, "***")
        return f": {message}" if message else ""

    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One REST call; its JSON. Raises NotConnectedError or ActionFailedError with a clear reason."""
        try:
            token = await self.token()
        except LinkError as exc:
            raise NotConnectedError(str(exc)) from None
        headers = {"Authorization": f"QQBot {token}", "X-Union-Appid": self.appid}
        try:
            async with self.http().request(
                method,
                self.settings.base_url + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=20),
            ) as response:
                raw = await response.read()
                status, trace = response.status, response.headers.get("X-Tps-trace-Id", "")
        except NETWORK_ERRORS as exc:
            raise NotConnectedError(f"QQ API unreachable: {describe(exc)}") from None
        data = parse_frame(self.log, raw, self.max_frame)
        if data is None:
            raise ActionFailedError(path, status, "the answer is not a JSON object")
        code = data.get("code")
        if status >= 300 or (code and "id" not in data):
            code = code if isinstance(code, int | str) and not isinstance(code, bool) else status
            if code == TOKEN_INVALID:
                self.forget_token()
            message = codec.text(data.get("message"))
            reason = ERRORS.get(code, message) if isinstance(code, int) else message
            raise ActionFailedError(path, code, f"{reason} (trace {trace})" if trace else reason)
        return data

    # --- events -----------------------------------------------------------------------------------

    async def dispatch(self, payload: dict[str, Any]) -> None:
        """One op 0 event (from a shard or the webhook); unknown kinds are ignored."""
        event = codec.decode_message(payload, self.instance, self.appid)
        if event is None:
            self.log.debug("ignored QQ event {}", str(payload.get("t"))[:40])
            return
        # A redelivered message must not make later replies answer it instead of the newest one.
        if event.message_id not in self._known:
            self._known[event.message_id] = None
            if len(self._known) > KNOWN_IDS:
                self._known.popitem(last=False)
            self._incoming[(event.group_id, event.user_id)] = _Incoming(event.message_id, time.monotonic())
        await self.sink(event)

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
        kind, target_id = ("groups", target.group_id) if group else ("users", target.user_id)
        media = next((seg for seg in message if isinstance(seg, Image | Voice)), None)
        file_info = await self._upload(kind, target_id, media) if media is not None else None
        incoming.replies += 1
        if file_info is not None:
            body = codec.media_reply(file_info, incoming.msg_id, incoming.replies)
        else:
            body = codec.text_reply(message, incoming.msg_id, incoming.replies)
        data = await self.api("POST", f"/v2/{kind}/{target_id}/messages", body)
        return codec.text(codec.obj(data).get("id")) or None

    async def _upload(self, kind: str, target_id: str, media: Image | Voice) -> str | None:
        """The `file_info` of `media` uploaded for one target (Tencent fetches it from a URL).

        A picture with no URL Tencent can reach gives None (its message goes out as text); a voice raises
        AdapterError instead, as an upload the platform refuses does for both: its text is the caller's to send.
        """
        file_type, content_type = MEDIA_TYPES[type(media)]
        try:
            url = await self._public_url(media, content_type)
        except AdapterError as exc:
            if isinstance(media, Voice):
                raise
            self.log.warning("a picture could not be sent: {}; sending text", exc)
            return None
        upload = await self.api(
            "POST", f"/v2/{kind}/{target_id}/files", {"file_type": file_type, "url": url, "srv_send_msg": False}
        )
        return codec.text(codec.obj(upload).get("file_info"))

    async def _public_url(self, media: Image | Voice, content_type: str) -> str:
        """A URL Tencent can fetch `media` from: its own http(s) URL, else its bytes put where Tencent can reach
        them (the resource server or the uploader). Raises AdapterError."""
        if media.url.startswith(("http://", "https://")):
            return media.url
        try:
            if media.base64:
                data = base64.b64decode(media.base64.removeprefix("base64://"), validate=True)
            else:
                data = await asyncio.to_thread(Path(media.path).read_bytes)
        except (OSError, ValueError) as exc:
            raise AdapterError(f"no readable data ({type(exc).__name__})") from None
        if not data:
            raise AdapterError("no data")
        try:
            return await public_url(data, self._uploader, self._resources, content_type)
        except (OSError, ValueError) as exc:
            raise AdapterError(f"the uploader failed ({type(exc).__name__})") from None


def _seconds(expires_in: object) -> float:
    """The token's lifetime: `expires_in` arrives as a string ("7200"); 7200 s when unreadable."""
    try:
        seconds = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 7200.0
    return seconds if 0 < seconds <= 7 * 86400 else 7200.0
