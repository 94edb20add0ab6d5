"""v2's HTTP API as a platform: each request is a private message, and the replies to it are its answer.

A request collects every reply to its message (a reply names the message it answers) until the
conversation layer says it is done with that message (`answered`): then `/v1/chat` returns and a
`/v2/chat/response` poll says DONE. `max_wait` is only a safety net for a bug upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from adapters.base import Adapter, EventSink
from adapters.frames import parse_frame
from adapters.http.codec import DONE, FAILED, SUCCESS, Result, collect, failed
from adapters.http.settings import HttpSettings
from adapters.listen import LOOPBACK, bearer_token, listen, listener_app, secret_matches
from core.errors import AdapterError
from core.event import ChatType, MessageEvent, Target
from core.message import Message, Text

MAX_WAIT_SECONDS = 660.0  # `[response] max_timeout` (600) and a margin: the model has given up by then
KEEP_SECONDS = 600.0  # v2 forgot a /v2 request 10 minutes after it was made
MAX_OPEN = 1000  # /v2 requests kept at once; a client that never polls cannot fill the memory
MAX_FIELD = 256  # session_id / username length
DEFAULT_SESSION, DEFAULT_USER = "friend-default_session", "某人"  # v2's defaults
JSON = "application/json"


def _error(status: int, text: str) -> web.Response:
    """An error in v2's shape (`result` FAILED, the reason in `message`)."""
    return web.Response(status=status, text=failed(text), content_type=JSON)


@dataclass(slots=True)
class _Request:
    """One chat request: what its session's replies have produced so far."""

    request_id: str
    session_id: str
    made: float = field(default_factory=time.monotonic)
    result: Result = field(default_factory=Result)
    status: str = SUCCESS
    done: asyncio.Event = field(default_factory=asyncio.Event)
    said: bool = False  # a reply came (a poll may have taken it from `result` already)


class HttpApiAdapter(Adapter):
    """`[http]`: `POST /v1/chat` (waits for the answer), `POST /v2/chat` + `GET /v2/chat/response` (polled)."""

    protocol = "http"
    max_text_length = 100_000  # an HTTP body: no need to split an answer
    voice_format = "mp3"  # v2's clients play `voice[]` as `data:audio/mpeg`

    def __init__(self, instance: str, settings: HttpSettings, sink: EventSink) -> None:
        super().__init__(instance, settings, sink)
        self.settings: HttpSettings = settings
        self.port: int | None = None
        self.max_wait = MAX_WAIT_SECONDS
        self._runner: web.AppRunner | None = None
        self._waiting: dict[str, deque[_Request]] = {}  # session_id -> its unfinished requests, oldest first
        self._polled: dict[str, _Request] = {}  # request_id -> a /v2 request until it is fetched or forgotten
        self._ids = itertools.count()

    async def start(self) -> None:
        """Listen on `[http] host`/`port`; raises AdapterError when the port is taken."""
        app = listener_app()
        app.router.add_post("/v1/chat", self._v1_chat)
        app.router.add_post("/v2/chat", self._v2_chat)
        app.router.add_get("/v2/chat/response", self._v2_response)
        try:
            self._runner, self.port = await listen(app, self.settings.host, self.settings.port)
        except AdapterError as exc:
            raise AdapterError(f"[http] {exc}; change [http] port") from None
        self.listener_status("HTTP API")
        self._link_up()
        self.log.info("v2 HTTP API at http://{}:{}/v1/chat", self.settings.host, self.port)
        if self.settings.host not in LOOPBACK:
            self.log.warning("the HTTP API listens on {}: every request must carry [http] token", self.settings.host)

    async def stop(self) -> None:
        """Close the listener; requests still waiting are closed with what they have (failed if nothing)."""
        await super().stop()
        for queue in list(self._waiting.values()):
            for request in list(queue):
                self._finish(request)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- replies --------------------------------------------------------------------------------

    def _request_for(self, session_id: str, request_id: str) -> _Request | None:
        """The open request `request_id` of the session; without an id (a reply to no message in
        particular), the session's oldest open request."""
        queue = self._waiting.get(session_id)
        if not queue:
            return None
        if not request_id:
            return queue[0]
        return next((request for request in queue if request.request_id == request_id), None)

    async def _send(self, target: Target, message: Message, quote: str | None) -> str | None:
        request = self._request_for(target.user_id, target.message_id)
        if request is None:
            self.log.warning("dropped a reply to {}: no request is waiting for it", target.describe())
            return None
        await collect(request.result, message)
        request.said = True
        if self.settings.debug:
            self.log.info("reply for request {}: {}", request.request_id, message)
        return None

    def answered(self, event: MessageEvent) -> None:
        """The bot is done with the request's message: its answer is complete."""
        request = self._request_for(event.user_id, event.message_id) if event.message_id else None
        if request is not None:
            self._finish(request)

    async def _answer(self, request: _Request) -> None:
        """The safety net: a request nobody closed within `max_wait` is closed with what it has."""
        try:
            async with asyncio.timeout(self.max_wait):
                await request.done.wait()
        except TimeoutError:
            self.log.warning("request {} got no end of its answer in {:.0f}s", request.request_id, self.max_wait)
        finally:
            self._finish(request)

    def _finish(self, request: _Request) -> None:
        """Close a request: no more replies go to it, and whoever waits for it gets its result
        (DONE, or FAILED when nothing at all was said)."""
        if request.done.is_set():
            return
        queue = self._waiting.get(request.session_id)
        if queue is not None and request in queue:
            queue.remove(request)
            if not queue:
                del self._waiting[request.session_id]
        if request.said:
            request.status = DONE
        else:
            request.status = FAILED
            request.result.message.append("没有收到回复 (no reply)")
        request.done.set()

    # --- requests -------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        token = self.settings.token.get_secret_value()
        # v2 had no token; programs written for it send none, so loopback without one stays open.
        return not token or secret_matches(bearer_token(request, "token"), token)

    async def _open(self, request: web.Request) -> _Request | web.Response:
        """Check and read a chat request; the new request, or the error answer."""
        if not self._authorized(request):
            self.log.warning("refused a request from {}: wrong or missing [http] token", request.remote)
            return _error(401, "访问令牌错误 (wrong or missing token)")
        # parse_frame bounds nesting and encoding too: a hostile body is one warning, never a traceback.
        data = parse_frame(self.log, await request.read(), self.max_body)
        if data is None:
            return _error(400, "请求应为 JSON 对象 (must be a JSON object)")
        session_id, username, text = data.get("session_id"), data.get("username"), data.get("message")
        for name, value in (("session_id", session_id), ("username", username), ("message", text)):
            if value is not None and not isinstance(value, str):
                return _error(400, f"{name} 应为字符串 (must be a string)")
        session_id = (session_id or DEFAULT_SESSION)[:MAX_FIELD]
        username = (username or DEFAULT_USER)[:MAX_FIELD]
        # v2's request id: the time in milliseconds; a counter keeps two requests in one ms apart.
        request_id = f"{int(time.time() * 1000)}{next(self._ids) % 1000:03d}"
        bot_request = _Request(request_id, session_id)
        if not text or not text.strip():
            # v2 answered an empty message at once, as a finished request.
            bot_request.result.message.append("message 不能为空!")
            bot_request.status = FAILED
            bot_request.done.set()
            return bot_request
        if self.settings.debug:
            self.log.info("request {} from {} [{}]: {}", request_id, session_id, username, text)
        self._waiting.setdefault(session_id, deque()).append(bot_request)
        waiter = self.tasks.spawn(self._answer(bot_request), name=f"http request {request_id}")
        event = MessageEvent(
            adapter=self.instance,
            platform="http",
            self_id="http",
            chat_type=ChatType.PRIVATE,
            user_id=session_id,
            message=(Text(text),),
            message_id=request_id,
            to_me=True,
            sender_name=username,
            time=time.time(),
        )
        try:
            await self.sink(event)
        except Exception:
            # The boundary answers 400; the request must not wait for a reply that will not come.
            waiter.cancel()  # a task cancelled before it runs never reaches its `finally`
            self._finish(bot_request)
            raise
        return bot_request

    async def _v1_chat(self, request: web.Request) -> web.Response:
        """v2's synchronous chat: answers when the reply is finished."""
        opened = await self._open(request)
        if isinstance(opened, web.Response):
            return opened
        await opened.done.wait()
        return web.Response(text=opened.result.body(opened.status), content_type=JSON)

    async def _v2_chat(self, request: web.Request) -> web.Response:
        """v2's asynchronous chat: the request id at once, as plain text; the answer is polled."""
        opened = await self._open(request)
        if isinstance(opened, web.Response):
            return opened
        self._forget_old()
        self._polled[opened.request_id] = opened
        return web.Response(text=opened.request_id)

    async def _v2_response(self, request: web.Request) -> web.Response:
        """What a /v2 request has produced since the last poll; DONE (and forgotten) once finished."""
        if not self._authorized(request):
            return _error(401, "访问令牌错误 (wrong or missing token)")
        request_id = request.query.get("request_id", "")
        found = self._polled.get(request_id)
        if found is None:
            return web.Response(text=failed("没有更多了！"), content_type=JSON)  # v2's answer, also with 200
        # `done` is read before taking the parts, so a part that arrives in between is not lost.
        finished = found.done.is_set()
        body = found.result.take().body(found.status if finished else SUCCESS)
        if finished:
            del self._polled[request_id]
        return web.Response(text=body, content_type=JSON)

    def _forget_old(self) -> None:
        now = time.monotonic()
        for request_id, found in list(self._polled.items()):
            if now - found.made > KEEP_SECONDS or len(self._polled) >= MAX_OPEN:
                del self._polled[request_id]
