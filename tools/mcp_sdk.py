"""The parts of MCP support that touch the official `mcp` SDK: transports, sessions, results, errors.

Everything here imports `mcp` lazily (inside the functions), so a bot with no MCP servers never loads it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from core.config import MCPServer

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult
    from mcp.types import Tool as SDKTool

Transport = Literal["stdio", "sse", "streamable_http"]

# What a stdio server inherits from the bot: enough to find programs and decode text, never the API keys
# the rest of the bot's environment holds. (The SDK adds its own safe set: HOME, LOGNAME, PATH, SHELL, TERM,
# USER.) `env` of the server's entry is merged on top.
_INHERITED = ("PATH", "HOME", "LANG", "SYSTEMROOT")  # SYSTEMROOT: Windows programs fail without it
_SSE_READ_TIMEOUT = 300.0  # seconds an idle SSE stream may stay silent (the SDK's default)
_MAX_TOOL_PAGES = 50
_CONNECTION_CLOSED = (
    -32000
)  # the SDK's error code for a request whose connection ended  # a server paginating forever is cut off here


def transport_of(server: MCPServer) -> Transport:
    """stdio without a URL; otherwise the configured transport, or SSE for a URL whose path ends in /sse."""
    if not server.url:
        return "stdio"
    if server.transport != "auto":
        return server.transport
    return "sse" if urlsplit(server.url).path.rstrip("/").endswith("/sse") else "streamable_http"


def where(server: MCPServer) -> str:
    """What a log line may say about where a server is: its command's name or its URL's host (no secret)."""
    if not server.url:
        return os.path.basename(server.command)
    return urlsplit(server.url).hostname or "?"


def safe_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a stdio server: the few harmless variables of the bot's own, then `extra`."""
    inherited = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    return inherited | extra


class _WatchedReadStream:
    """The transport's read stream, passed through, with `closed` set once the session stops reading it
    (end of stream: the process died or the connection ended; or our own shutdown)."""

    def __init__(self, inner: Any, closed: asyncio.Event) -> None:
        self._inner = inner
        self.closed = closed

    def __getattr__(self, name: str) -> Any:  # e.g. `last_context` of context-carrying streams
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        return await self._inner.receive()

    async def aclose(self) -> None:
        self.closed.set()
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self.closed.set()
            raise

    async def __aenter__(self) -> _WatchedReadStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self.closed.set()
        result: bool | None = await self._inner.__aexit__(exc_type, exc, tb)
        return result


@dataclass(slots=True)
class Connection:
    """An initialized session; `closed` is set when the server is gone."""

    session: ClientSession
    closed: asyncio.Event


NotificationHandler = Callable[[Any], Awaitable[None]]


async def connect(server: MCPServer, stack: AsyncExitStack, on_message: NotificationHandler) -> Connection:
    """Open the server's transport and an initialized session on it, both closed by `stack`."""
    from mcp import ClientSession

    read, write = await stack.enter_async_context(_open_transport(server))
    closed = asyncio.Event()
    watched = _WatchedReadStream(read, closed)
    session = await stack.enter_async_context(ClientSession(watched, write, message_handler=on_message))  # type: ignore[arg-type]
    await session.initialize()
    return Connection(session, closed)


def _open_transport(server: MCPServer) -> Any:
    """The SDK's transport context manager for this server (yields the read and write streams)."""
    kind = transport_of(server)
    if kind == "stdio":
        from mcp import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=server.command, args=server.args, env=safe_environment(server.env))
        return stdio_client(params)
    if kind == "sse":
        from mcp.client.sse import sse_client

        return sse_client(
            server.url, headers=dict(server.headers), timeout=server.timeout, sse_read_timeout=_SSE_READ_TIMEOUT
        )
    return _streamable_http(server)


def _streamable_http(server: MCPServer) -> Any:
    from contextlib import asynccontextmanager

    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    @asynccontextmanager
    async def opened() -> Any:
        timeout = httpx2.Timeout(server.timeout, read=_SSE_READ_TIMEOUT)
        async with (
            httpx2.AsyncClient(headers=dict(server.headers), timeout=timeout) as client,
            streamable_http_client(server.url, http_client=client) as streams,
        ):
            yield streams

    return opened()


async def list_tools(session: ClientSession) -> list[SDKTool]:
    """Every tool the server offers, following pagination."""
    from mcp.types import PaginatedRequestParams

    tools: list[SDKTool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def is_tool_list_changed(message: Any) -> bool:
    """Whether a server message says its tool list changed."""
    from mcp.types import ToolListChangedNotification

    return isinstance(message, ToolListChangedNotification)


def render_result(result: CallToolResult) -> str:
    """The result's content as text for the model: text joined, other content named in brackets."""
    parts = [_render_block(block) for block in result.content]
    text = "\n".join(part for part in parts if part)
    if not result.content and result.structured_content is not None:
        import json

        text = json.dumps(result.structured_content, ensure_ascii=False)
    return text


def _render_block(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(block.text)
    if kind == "image":
        return "[图片]"
    if kind == "audio":
        return "[音频]"
    if kind == "resource_link":
        return f"[资源 {block.uri}]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        return str(text) if text is not None else f"[资源 {resource.uri}]"
    return ""


def is_error(result: CallToolResult) -> bool:
    return bool(result.is_error)


def error_kind(exc: BaseException) -> str:
    """A short name for what went wrong, safe to log: never the message (it may hold a URL or a header)."""
    leaf = _first_leaf(exc)
    if isinstance(leaf, FileNotFoundError):
        return "command not found"
    if isinstance(leaf, PermissionError):
        return "permission denied"
    if isinstance(leaf, TimeoutError):
        return "timeout"
    if isinstance(leaf, ConnectionError) or type(leaf).__name__ == "ConnectError":  # httpx2.ConnectError too
        return "connection failed"
    if type(leaf).__name__.endswith("Timeout"):  # httpx2's ConnectTimeout, ReadTimeout, ...
        return "timeout"
    status = getattr(getattr(leaf, "response", None), "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    if is_mcp_error(leaf):
        return "connection closed" if leaf.code == _CONNECTION_CLOSED else f"MCP error {leaf.code}"  # type: ignore[attr-defined]
    return type(leaf).__name__


def is_mcp_error(exc: BaseException) -> bool:
    """Whether `exc` is an error answer of the MCP peer (or the SDK's own "connection closed")."""
    mcp_errors = sys.modules.get("mcp.shared.exceptions")
    return mcp_errors is not None and isinstance(exc, mcp_errors.MCPError)


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, which anyio task groups wrap errors in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
