"""How Milky events reach the bot: a WebSocket or SSE stream it dials, or webhook posts to its own listener."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import WSMsgType, web

from adapters.link import FatalLinkError, Link, LinkError, LinkState, LinkStatus, Verdict, describe
from adapters.listen import LOOPBACK, bearer_token, listen, listener_app, secret_matches
from adapters.sse import sse_data
from core.backoff import Backoff

if TYPE_CHECKING:
    from adapters.milky.adapter import MilkyAdapter

TOKEN_REFUSED = "the Milky implementation refused the access token (HTTP {}): set [milky] access_token to its token"
HEARTBEAT = 30.0
# The implementation's SSE keep-alive comments come far more often; this much silence is a dead stream.
SSE_READ_TIMEOUT = 120.0
# Webhook mode has no stream to watch, so the API is asked this often whether it is still there.
PROBE_SECONDS = 60.0
# The reconnect schedule; tests shorten it.
RECONNECT_MIN_DELAY = 1.0
RECONNECT_MAX_DELAY = 30.0


class EventTransport(Protocol):
    """What the adapter starts and stops; `port` is the webhook listener's, when there is one."""

    port: int | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def create_transport(adapter: MilkyAdapter) -> EventTransport:
    """The transport `[milky] event_transport` names."""
    if adapter.settings.event_transport == "webhook":
        return Webhook(adapter)
    return EventStream(adapter)


def _backoff() -> Backoff:
    return Backoff(min_delay=RECONNECT_MIN_DELAY, max_delay=RECONNECT_MAX_DELAY)


class EventStream:
    """`GET {url}/event` as a WebSocket or an SSE stream, kept up by one Link."""

    port: int | None = None

    def __init__(self, adapter: MilkyAdapter) -> None:
        self.adapter = adapter
        self.kind = adapter.settings.event_transport
        self.url = f"{adapter.url}/event"
        session = self._websocket if self.kind == "ws" else self._sse
        self.link = Link(f"Milky event stream ({self.kind}) at {self.url}", session, adapter.log, backoff=_backoff())

    async def start(self) -> None:
        self.adapter.supervise(self.link)

    async def stop(self) -> None:
        self.link.stop()

    def _up(self, link: Link) -> None:
        adapter = self.adapter
        adapter.log.info("Milky event stream connected ({})", self.kind)
        link.up()
        adapter._link_up()
        adapter.tasks.spawn(adapter.login(), name=f"{adapter.instance}-login")

    async def _websocket(self, link: Link) -> str:
        adapter = self.adapter
        assert adapter.http is not None
        try:
            ws = await adapter.http.ws_connect(
                self.url,
                headers=adapter.auth_headers(),
                heartbeat=HEARTBEAT,
                **adapter.ws_options,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise FatalLinkError(TOKEN_REFUSED.format(exc.status)) from None
            raise
        async with ws:
            self._up(link)
            try:
                async for msg in ws:
                    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        await adapter.receive(msg.data, adapter.on_event, link.status)
                    elif msg.type is WSMsgType.ERROR:
                        # A frame over the cap ends here too (aiohttp closes with 1009).
                        error = ws.exception()
                        return f"closed ({ws.close_code}, {describe(error) if error else 'error'})"
            finally:
                adapter._link_down()
        return f"closed ({ws.close_code})"

    async def _sse(self, link: Link) -> str:
        adapter = self.adapter
        assert adapter.http is not None
        async with adapter.http.get(
            self.url,
            headers={**adapter.auth_headers(), "Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=SSE_READ_TIMEOUT),
        ) as response:
            if response.status in (401, 403):
                raise FatalLinkError(TOKEN_REFUSED.format(response.status))
            if response.status != 200:
                raise LinkError(f"HTTP {response.status}")
            if response.content_type != "text/event-stream":
                raise LinkError(f"not an event stream ({response.content_type[:60]})")
            self._up(link)
            try:
                async for data in sse_data(response.content, adapter.max_body, adapter.log):
                    await adapter.receive(data, adapter.on_event, link.status, limit=adapter.max_body)
            finally:
                adapter._link_down()
        return "stream ended"


class Webhook:
    """The implementation posts events to the bot's listener; a Link watches the API, which is the only
    way to know the implementation is there at all."""

    def __init__(self, adapter: MilkyAdapter) -> None:
        self.adapter = adapter
        self.port: int | None = None
        self.listener: LinkStatus | None = None
        self._runner: web.AppRunner | None = None
        self.link = Link(
            f"Milky API at {adapter.url}", self._api, adapter.log, backoff=_backoff(), on_verdict=self._verdict
        )

    async def start(self) -> None:
        adapter = self.adapter
        host, port = adapter.settings.webhook_host, adapter.settings.webhook_port
        app = listener_app(adapter.max_body)
        app.router.add_post("/{tail:.*}", self._post)
        self._runner, self.port = await listen(app, host, port)
        self.listener = adapter.listener_status(f"Milky webhook on http://{host}:{self.port}/")
        if host not in LOOPBACK and not adapter.token:
            adapter.log.warning("SECURITY: the Milky webhook listens on {} without [milky] access_token", host)
        adapter.supervise(self.link)

    async def stop(self) -> None:
        self.link.stop()
        await self._close()

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _verdict(self, verdict: Verdict) -> None:
        # Without the API no event can be answered: the listener stops with the link, so that the platform
        # counts as stopped (and a bot with nothing else to do exits and says why).
        if verdict is Verdict.FATAL and self.listener is not None:
            self.listener.set(LinkState.STOPPED, "the Milky API refused the access token")
            self.adapter.tasks.spawn(self._close(), name=f"{self.adapter.instance}-webhook-close")

    async def _post(self, request: web.Request) -> web.Response:
        adapter = self.adapter
        if adapter.token and not secret_matches(bearer_token(request), adapter.token):
            adapter.log.warning("refused a Milky webhook call from {}: wrong or missing token", request.remote)
            return web.Response(status=401)
        body = await request.read()
        parsed = False

        async def handle(event: dict[str, Any]) -> None:
            nonlocal parsed
            parsed = True
            await adapter.on_event(event)

        await adapter.receive(body, handle, self.listener, limit=adapter.max_body)
        # A body that is not a JSON event is the sender's mistake (400); one that failed inside is dropped (204).
        return web.Response(status=204 if parsed else 400)

    async def _api(self, link: Link) -> str:
        adapter = self.adapter
        await adapter.check_login()
        adapter.log.info("Milky API at {} is answering; events arrive by webhook", adapter.url)
        adapter.api_lost.clear()
        link.up()
        adapter._link_up()
        try:
            while True:
                try:
                    async with asyncio.timeout(PROBE_SECONDS):
                        await adapter.api_lost.wait()
                except TimeoutError:
                    await adapter.check_login(quiet=True)
                    continue
                return "the Milky API stopped answering"
        finally:
            adapter._link_down()
