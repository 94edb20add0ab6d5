"""MCP servers for the tests, written with the SDK's high-level server (FastMCP, `MCPServer` in mcp 2).

`python tests/fakes/mcp_servers.py` serves the tools over stdio (a separate process the bot can lose);
`serve_http("streamable_http" | "sse")` serves them in-process over HTTP on 127.0.0.1 and records the
Authorization header of every request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def build_server(name: str = "fake") -> MCPServer:
    """A server with a few tools: echo, one that fails, its pid, its environment, one that kills its process."""
    server: MCPServer = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return f"echo: {text}"

    @server.tool()
    def fail(reason: str) -> str:
        """Fail on purpose (the result has isError set)."""
        raise ToolError(f"failed on purpose: {reason}")

    @server.tool()
    def pid() -> int:
        """The server process's id."""
        return os.getpid()

    @server.tool()
    def getenv(name: str) -> str:
        """An environment variable of the server process ("" when unset)."""
        return os.environ.get(name, "")

    @server.tool()
    async def grow(name: str, ctx: Context) -> str:
        """Add a tool called `name` (it answers "grown") and tell the client that the tool list changed."""

        def grown() -> str:
            return "grown"

        server.add_tool(grown, name=name, description="A tool added while the server runs.")
        await ctx.session.send_tool_list_changed()
        return "ok"

    @server.tool()
    def crash() -> str:
        """End the server process at once, as a crash would."""
        os._exit(3)

    return server


@dataclass
class HTTPServer:
    """A running in-process HTTP MCP server."""

    url: str
    authorizations: list[str] = field(default_factory=list)


@asynccontextmanager
async def serve_http(transport: Literal["streamable_http", "sse"]) -> AsyncIterator[HTTPServer]:
    """Serve `build_server()` over HTTP on 127.0.0.1 (a free port), recording Authorization headers."""
    import uvicorn

    mcp = build_server(f"fake-{transport}")
    app = mcp.sse_app() if transport == "sse" else mcp.streamable_http_app()
    seen: list[str] = []

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            seen.append(headers.get(b"authorization", b"").decode("latin-1"))
        await app(scope, receive, send)

    config = uvicorn.Config(recording, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        path = "/sse" if transport == "sse" else "/mcp"
        running = HTTPServer(f"http://127.0.0.1:{port}{path}")
        running.authorizations = seen
        yield running
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


if __name__ == "__main__":
    build_server().run("stdio")
