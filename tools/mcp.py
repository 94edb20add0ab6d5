"""MCP servers as tool sources: each `[[mcp.servers]]` entry is kept connected by its own supervisor.

A supervisor connects (stdio, SSE or streamable HTTP through the official `mcp` SDK), initializes, lists the
server's tools and stays up; when the session ends or fails it logs one warning, hides the server's tools and
tries again with backoff, forever, until `stop()`. Nothing a server does reaches the bot as an exception:
a tool call fails with `ToolError`, everything else is a log line and a state in `status()`.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from core.backoff import Backoff
from core.config import MCPServer
from core.tasks import TaskSet
from tools.base import Tool, ToolError, ToolSpec
from tools.mcp_sdk import (
    Connection,
    connect,
    error_kind,
    is_mcp_error,
    is_tool_list_changed,
    list_tools,
    render_result,
    transport_of,
    where,
)

if TYPE_CHECKING:
    from mcp.types import Tool as SDKTool

State = Literal["starting", "up", "down"]

_HEALTH_INTERVAL = 30.0  # seconds between pings of an idle session (finds a hung server or a dead HTTP peer)
_HEALTHY_AFTER = 60.0  # a session up this long starts the backoff schedule again from its shortest delay
_STOP_TIMEOUT = 10.0  # stdio children get the SDK's close-stdin / SIGTERM / SIGKILL sequence within this
_ERROR_TEXT_LIMIT = 200
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def tool_name(server: str, tool: str) -> str:
    """The name the model sees: `<server>__<tool>`, limited to what OpenAI accepts ([A-Za-z0-9_-], ≤64)."""
    return _INVALID_NAME_CHARS.sub("_", f"{server}__{tool}")[:64]


def default_backoff() -> Backoff:
    """Restart delays of a server: 1 s doubling up to 60 s."""
    return Backoff(min_delay=1.0, max_delay=60.0)


@dataclass(eq=False)
class _Runtime:
    """What the bot knows about one server right now."""

    config: MCPServer
    state: State = "starting"
    connection: Connection | None = None
    tools: tuple[MCPTool, ...] = ()
    error: str = ""
    restarts: int = 0
    relist: asyncio.Event = field(default_factory=asyncio.Event)
    up_since: float | None = None  # time.monotonic() when the current session came up

    @property
    def name(self) -> str:
        return self.config.name

    def up(self, connection: Connection, tools: tuple[MCPTool, ...]) -> None:
        self.connection, self.tools, self.state, self.error = connection, tools, "up", ""
        self.up_since = time.monotonic()
        self.relist.clear()

    def hide(self) -> None:
        """No session to call: its tools are gone until the next one is up."""
        self.connection, self.tools, self.state = None, (), "down"

    def down(self, error: str) -> None:
        self.hide()
        self.error = error

    def unavailable(self) -> ToolError:
        return ToolError(f"MCP 服务 {self.name} 暂时不可用")


class MCPTool:
    """One tool of an MCP server, called through the server's current session."""

    def __init__(self, runtime: _Runtime, remote_name: str, spec: ToolSpec) -> None:
        self._runtime = runtime
        self._remote_name = remote_name
        self._spec = spec

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        """The tool's text result; ToolError when the server is down, the call fails or the tool reports an error."""
        connection = self._runtime.connection
        if self._runtime.state != "up" or connection is None:
            raise self._runtime.unavailable()
        try:
            result = await connection.session.call_tool(self._remote_name, arguments)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failure(connection, exc) from None
        text = render_result(result)
        if result.is_error:
            raise ToolError((text or "工具返回了错误 (the tool reported an error)")[:_ERROR_TEXT_LIMIT])
        return text

    def _failure(self, connection: Connection, exc: Exception) -> ToolError:
        kind = error_kind(exc)
        logger.warning("MCP server {}: call of tool {} failed: {}", self._runtime.name, self._remote_name, kind)
        if connection.closed.is_set() or kind == "connection closed":
            return self._runtime.unavailable()
        if is_mcp_error(exc):  # the server's own answer (unknown tool, bad arguments): worth showing
            return ToolError(f"MCP 工具调用失败：{str(exc)[:_ERROR_TEXT_LIMIT]}")
        return ToolError(f"MCP 工具调用失败 ({kind})")


class MCPTools:
    """The tools of every enabled MCP server, each server kept up by a supervisor task."""

    def __init__(
        self,
        servers: Sequence[MCPServer],
        *,
        backoff: Callable[[], Backoff] = default_backoff,
        health_interval: float = _HEALTH_INTERVAL,
    ) -> None:
        self._runtimes = [_Runtime(server) for server in servers if server.enable]
        self._backoff = backoff
        self._health_interval = health_interval
        self._tasks = TaskSet("mcp")

    async def start(self) -> None:
        """Start a supervisor per server and return at once (a broken server never delays the bot)."""
        if len(self._tasks):
            return
        for runtime in self._runtimes:
            self._tasks.spawn(self._supervise(runtime), name=f"mcp:{runtime.name}")

    async def stop(self) -> None:
        """Close every session; stdio servers are terminated and reaped."""
        await self._tasks.close(timeout=_STOP_TIMEOUT)
        for runtime in self._runtimes:
            runtime.down(runtime.error)

    def tools(self) -> list[Tool]:
        """The tools of the servers that are up now (a name seen twice keeps its first tool)."""
        seen: set[str] = set()
        tools: list[Tool] = []
        for runtime in self._runtimes:
            if runtime.state != "up":
                continue
            for tool in runtime.tools:
                if tool.spec.name not in seen:
                    seen.add(tool.spec.name)
                    tools.append(tool)
        return tools

    def status(self) -> list[dict[str, Any]]:
        """One row per server for the console and `.状态`."""
        return [
            {
                "name": runtime.name,
                "transport": transport_of(runtime.config),
                "target": where(runtime.config),
                "state": runtime.state,
                "tools": len(runtime.tools),
                "error": runtime.error,
                "restarts": runtime.restarts,
            }
            for runtime in self._runtimes
        ]

    async def _supervise(self, runtime: _Runtime) -> None:
        """Keep one server up until cancelled; nothing raises out of here."""
        if not await _sdk_loaded():
            runtime.down("mcp not installed")
            return
        backoff = self._backoff()
        while True:
            runtime.state, runtime.up_since = "starting", None
            error = await self._run_session(runtime)
            up_since = runtime.up_since
            runtime.down(error)
            if up_since is not None and time.monotonic() - up_since >= _HEALTHY_AFTER:
                backoff.reset()
            delay = backoff.next_delay()
            logger.warning(
                "MCP server {} ({}) is down: {}; retrying in {:.1f}s",
                runtime.name,
                where(runtime.config),
                error,
                delay,
            )
            await asyncio.sleep(delay)
            runtime.restarts += 1

    async def _run_session(self, runtime: _Runtime) -> str:
        """One session from connect to its end; returns what ended it."""
        config = runtime.config
        try:
            async with AsyncExitStack() as stack:
                async with asyncio.timeout(config.timeout):
                    connection = await connect(config, stack, self._message_handler(runtime))
                    listed = await list_tools(connection.session)
                runtime.up(connection, self._wrap(runtime, listed))
                logger.info("MCP server {} is up with {} tool(s)", runtime.name, len(runtime.tools))
                try:
                    await self._stay_up(runtime, connection)
                finally:
                    runtime.hide()  # before the transport's own shutdown, which may take seconds
            return "session closed"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stop()
            return "cancelled by the transport"  # a stray cancellation from inside the SDK: restart
        except Exception as exc:
            return error_kind(exc)

    async def _stay_up(self, runtime: _Runtime, connection: Connection) -> None:
        """Return when the session ends; list tools again when told to, ping when idle."""
        timeout = runtime.config.timeout
        while not connection.closed.is_set():
            await _first_of(connection.closed, runtime.relist, timeout=self._health_interval)
            if connection.closed.is_set():
                return
            async with asyncio.timeout(timeout):
                if runtime.relist.is_set():
                    runtime.relist.clear()
                    runtime.tools = self._wrap(runtime, await list_tools(connection.session))
                    logger.info("MCP server {} now offers {} tool(s)", runtime.name, len(runtime.tools))
                else:
                    await connection.session.send_ping()

    def _message_handler(self, runtime: _Runtime) -> Callable[[Any], Any]:
        async def handle(message: Any) -> None:
            if isinstance(message, Exception):
                logger.debug("MCP server {}: transport error {}", runtime.name, error_kind(message))
            elif is_tool_list_changed(message):
                runtime.relist.set()

        return handle

    def _wrap(self, runtime: _Runtime, listed: Sequence[SDKTool]) -> tuple[MCPTool, ...]:
        """The server's tools as bot tools, named with the server's prefix."""
        tools: dict[str, MCPTool] = {}
        for remote in listed:
            name = tool_name(runtime.name, remote.name)
            if name in tools:
                logger.warning("MCP server {}: tool name {} is used twice, keeping the first", runtime.name, name)
                continue
            spec = ToolSpec(
                name=name,
                description=(remote.description or "").strip() or remote.name,
                parameters=_schema(remote.input_schema),
                progress=f"正在使用工具 {name}…",
            )
            tools[name] = MCPTool(runtime, remote.name, spec)
        return tuple(tools.values())


async def _sdk_loaded() -> bool:
    """Import the SDK (about a second of work) in a thread, so the bot's loop keeps running meanwhile."""
    try:
        await asyncio.to_thread(importlib.import_module, "mcp")
    except ImportError:
        logger.error("MCP servers are configured but the `mcp` package is missing: pip install -r requirements.txt")
        return False
    return True


def _schema(input_schema: Any) -> dict[str, Any]:
    """The tool's JSON schema as OpenAI wants it: an object schema."""
    if not isinstance(input_schema, dict) or input_schema.get("type") != "object":
        return dict(_EMPTY_SCHEMA)
    return input_schema


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of `events` is set or `timeout` seconds pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
