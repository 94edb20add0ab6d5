"""MCP servers as tool sources: real PyPI servers over stdio, our own over streamable HTTP and SSE, crashes.

Every server runs for real: stdio servers as child processes of the test, HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from core.backoff import Backoff
from core.config import MCPServer
from tests.conftest import eventually
from tests.fakes.mcp_servers import serve_http
from tools.base import Tool, ToolError
from tools.mcp import MCPTools, tool_name

FAKE_SERVER = str(Path(__file__).parent / "fakes" / "mcp_servers.py")
SECRET = "Bearer s3cret-token-value"
HAS_PROC = Path("/proc/self/stat").exists()


def child_pids() -> set[int]:
    """Processes whose parent is this test process (zombies included)."""
    me, children = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            children.add(int(entry))
    return children


def short_backoff() -> Backoff:
    return Backoff(min_delay=0.5, max_delay=0.5, jitter=0.0)


@pytest.fixture
async def make_tools() -> AsyncIterator[Callable[..., MCPTools]]:
    """Build and start MCPTools; on teardown stop them and check that no child process is left."""
    if not HAS_PROC:
        pytest.skip("needs /proc to see child processes")
    before = child_pids()
    made: list[MCPTools] = []

    def make(*servers: MCPServer, **options: Any) -> MCPTools:
        tools = MCPTools(list(servers), **options)
        made.append(tools)
        return tools

    yield make
    for tools in made:
        await tools.stop()
    await eventually(lambda: child_pids() <= before, timeout=5)


def by_name(tools: MCPTools, name: str) -> Tool:
    found = [tool for tool in tools.tools() if tool.spec.name == name]
    assert found, f"{name} not in {[tool.spec.name for tool in tools.tools()]}"
    return found[0]


def fake_stdio(name: str = "fake", **options: Any) -> MCPServer:
    return MCPServer(name=name, command=sys.executable, args=[FAKE_SERVER], timeout=20, **options)


def state(tools: MCPTools, name: str) -> dict[str, Any]:
    return next(row for row in tools.status() if row["name"] == name)


async def test_time_server_from_pypi_over_stdio(make_tools: Callable[..., MCPTools]) -> None:
    server = MCPServer(
        name="time",
        command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "Asia/Shanghai"],
        timeout=20,
    )
    tools = make_tools(server)
    await tools.start()
    assert tools.tools() == []  # start() does not wait for the server
    await eventually(lambda: state(tools, "time")["state"] == "up", timeout=20)

    names = {tool.spec.name for tool in tools.tools()}
    assert {"time__get_current_time", "time__convert_time"} <= names
    tool = by_name(tools, "time__get_current_time")
    assert tool.spec.parameters["type"] == "object" and "timezone" in tool.spec.parameters["properties"]
    assert tool.spec.description and tool.spec.progress == "正在使用工具 time__get_current_time…"

    reply = json.loads(await tool.call({"timezone": "Asia/Shanghai"}))
    assert reply["timezone"] == "Asia/Shanghai"
    now = datetime.fromisoformat(reply["datetime"])
    assert now.utcoffset() is not None and now.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert state(tools, "time") | {"restarts": 0} == state(tools, "time")


async def test_fetch_server_from_pypi_reads_a_local_page(make_tools: Callable[..., MCPTools]) -> None:
    async def page(request: web.Request) -> web.Response:
        html = "<html><head><title>本地页面</title></head><body><article><h1>测试标题</h1>"
        html += "<p>The quick brown fox reads MCP pages on loopback.</p>" * 3 + "</article></body></html>"
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/page", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        server = MCPServer(
            name="fetch",
            command=sys.executable,
            args=["-m", "mcp_server_fetch", "--ignore-robots-txt", "--allow-private-ips"],
            timeout=20,
        )
        tools = make_tools(server)
        await tools.start()
        await eventually(lambda: state(tools, "fetch")["state"] == "up", timeout=20)
        text = await by_name(tools, "fetch__fetch").call({"url": f"http://127.0.0.1:{port}/page"})
        assert "quick brown fox reads MCP pages" in text
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_http_server_gets_headers_and_tool_errors_raise(
    transport: str, make_tools: Callable[..., MCPTools], log_lines: list[str]
) -> None:
    async with serve_http(transport) as http:  # type: ignore[arg-type]
        server = MCPServer(name="web", url=http.url, headers={"Authorization": SECRET}, timeout=10)
        tools = make_tools(server)
        await tools.start()
        await eventually(lambda: state(tools, "web")["state"] == "up", timeout=10)
        assert state(tools, "web")["transport"] == transport  # chosen from the URL (/sse or not)

        assert await by_name(tools, "web__echo").call({"text": "你好"}) == "echo: 你好"
        with pytest.raises(ToolError, match="failed on purpose: 测试"):
            await by_name(tools, "web__fail").call({"reason": "测试"})

        assert http.authorizations and all(value == SECRET for value in http.authorizations)
        await tools.stop()
    assert not any("s3cret" in line for line in log_lines)


async def test_crashed_server_is_restarted_and_its_tools_come_back(make_tools: Callable[..., MCPTools]) -> None:
    tools = make_tools(fake_stdio(), backoff=short_backoff)
    await tools.start()
    await eventually(lambda: state(tools, "fake")["state"] == "up", timeout=20)
    first_pid = int(await by_name(tools, "fake__pid").call({}))
    echo = by_name(tools, "fake__echo")

    with pytest.raises(ToolError, match="MCP 服务 fake 暂时不可用"):
        await by_name(tools, "fake__crash").call({})
    await eventually(lambda: tools.tools() == [], timeout=5)  # gone while the server is down
    assert state(tools, "fake")["state"] in ("down", "starting")
    with pytest.raises(ToolError, match="MCP 服务 fake 暂时不可用"):
        await echo.call({"text": "还在吗"})

    await eventually(lambda: state(tools, "fake")["state"] == "up", timeout=20)
    assert state(tools, "fake")["restarts"] == 1
    assert await by_name(tools, "fake__echo").call({"text": "回来了"}) == "echo: 回来了"
    assert int(await by_name(tools, "fake__pid").call({})) != first_pid


async def test_tool_list_changed_lists_again(make_tools: Callable[..., MCPTools]) -> None:
    tools = make_tools(fake_stdio())
    await tools.start()
    await eventually(lambda: state(tools, "fake")["state"] == "up", timeout=20)
    assert await by_name(tools, "fake__grow").call({"name": "late.tool"}) == "ok"
    await eventually(lambda: any(tool.spec.name == "fake__late_tool" for tool in tools.tools()), timeout=10)
    assert await by_name(tools, "fake__late_tool").call({}) == "grown"


async def test_missing_command_is_down_and_others_work(
    make_tools: Callable[..., MCPTools], log_lines: list[str]
) -> None:
    broken = MCPServer(name="broken", command="/nonexistent/mcp-server-that-is-not-there", timeout=5)
    tools = make_tools(broken, fake_stdio(), backoff=short_backoff)
    await tools.start()
    await eventually(lambda: state(tools, "fake")["state"] == "up", timeout=20)
    await eventually(lambda: state(tools, "broken")["error"] == "command not found", timeout=5)

    assert state(tools, "broken")["state"] in ("down", "starting") and state(tools, "broken")["tools"] == 0
    assert all(tool.spec.name.startswith("fake__") for tool in tools.tools())
    assert await by_name(tools, "fake__echo").call({"text": "x"}) == "echo: x"
    assert any("broken" in line and "command not found" in line for line in log_lines)


async def test_stdio_server_does_not_inherit_the_bots_secrets(
    make_tools: Callable[..., MCPTools], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    tools = make_tools(fake_stdio(env={"GREETING": "你好"}))
    await tools.start()
    await eventually(lambda: state(tools, "fake")["state"] == "up", timeout=20)
    getenv = by_name(tools, "fake__getenv")
    assert await getenv.call({"name": "OPENAI_API_KEY"}) == ""
    assert await getenv.call({"name": "GREETING"}) == "你好"
    assert await getenv.call({"name": "PATH"}) != ""


async def test_silent_server_times_out_and_is_killed(make_tools: Callable[..., MCPTools]) -> None:
    silent = MCPServer(name="silent", command=sys.executable, args=["-c", "import time; time.sleep(120)"], timeout=1)
    tools = make_tools(silent, backoff=short_backoff)
    await tools.start()
    await eventually(lambda: state(tools, "silent")["error"] == "timeout", timeout=10)
    assert tools.tools() == []


async def test_unreachable_url_is_down_and_stop_is_prompt(make_tools: Callable[..., MCPTools]) -> None:
    import socket

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tools = make_tools(MCPServer(name="gone", url=f"http://127.0.0.1:{port}/mcp?key=secret", timeout=5))
    await tools.start()
    await eventually(lambda: state(tools, "gone")["state"] == "down", timeout=10)
    assert state(tools, "gone")["target"] == "127.0.0.1"
    assert state(tools, "gone")["error"] == "connection failed"
    async with asyncio.timeout(5):
        await tools.stop()


def test_tool_names_are_sanitised_and_bounded() -> None:
    assert tool_name("time", "get_current_time") == "time__get_current_time"
    assert tool_name("s", "读 文件.v2") == "s_______v2"
    assert len(tool_name("s" * 32, "t" * 64)) == 64
