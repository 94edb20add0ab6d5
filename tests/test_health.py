"""Health is impossible to miss: /healthz per link, the Docker HEALTHCHECK command itself, and the process
exiting 1 when every platform has stopped for good."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, free_port, spawn_bot, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message
from tests.fakes.mirai_server import FakeMiraiServer
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


def forward_to(url: str) -> dict[str, Any]:
    return {"reverse_ws_port": None, "reverse_ws_host": None, "ws_url": url, "http_url": url}


def dockerfile_healthcheck() -> list[str]:
    """The HEALTHCHECK's CMD from the Dockerfile, exactly as Docker runs it."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    command: list[str] = json.loads(line.split("CMD", 1)[1].strip())
    return command


def image_folder(config: Path) -> Path:
    """A folder laid out like the image's /app: config.toml beside where the command runs."""
    app_dir = config.parent / "app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "config.toml").write_text(config.read_text(encoding="utf-8"), encoding="utf-8")
    return app_dir


async def run_healthcheck(config: Path) -> tuple[int, str]:
    """Run the Docker HEALTHCHECK command as Docker does, in the image's working folder."""
    app_dir = image_folder(config)
    command = dockerfile_healthcheck()
    executable = sys.executable if command[0] == "python" else command[0]
    process = await asyncio.create_subprocess_exec(
        executable,
        *command[1:],
        cwd=app_dir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # the image has the code in /app itself
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status, await response.json()


def web_port(config: Path) -> int:
    section = config.read_text(encoding="utf-8").split("[web]")[1]
    return int(next(line for line in section.splitlines() if line.startswith("port")).split("=")[1])


async def test_the_docker_healthcheck_follows_a_dial_out_link(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    port = free_port()
    config = write_config({"mirai": forward_to(f"http://127.0.0.1:{port}")})
    server = FakeMiraiServer(VERIFY_KEY, BOT_QQ, port=port)
    await server.start()
    app = await start_bot(config)
    try:
        await server.wait_connected(timeout=10)
        await eventually(lambda: app.adapters["mirai"].connected)
        code, out = await run_healthcheck(config)
        assert code == 0, out
        status, report = await healthz(web_port(config))
        assert status == 200 and report["status"] == "ok"
        [platform] = report["platforms"]
        assert platform["platform"] == "mirai" and [link["state"] for link in platform["links"]] == ["up"]

        await server.stop()  # the peer goes away: the bot is running but deaf until it is back
        await eventually(lambda: not app.adapters["mirai"].connected)
        code, out = await run_healthcheck(config)
        assert code == 1 and "503" in out, out
        status, report = await healthz(web_port(config))
        assert status == 503 and report["platforms"][0]["links"][0]["state"] in ("down", "connecting")

        await server.start()
        await server.wait_connected(timeout=15)
        await eventually(lambda: app.adapters["mirai"].connected, timeout=15)
        code, out = await run_healthcheck(config)
        assert code == 0, out
    finally:
        await app.stop()
        await server.stop()


async def test_healthz_reports_a_listener_and_its_last_event(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    config = write_config()
    app = await start_bot(config)
    try:
        status, report = await healthz(web_port(config))
        assert status == 200  # listening counts as healthy: the QQ side dials in when it is ready
        [link] = report["platforms"][0]["links"]
        assert link["state"] == "listening" and link["last_event"] is None
        mirai = FakeMirai(f"ws://127.0.0.1:{app.adapters['mirai'].port}/", VERIFY_KEY, BOT_QQ)  # type: ignore[attr-defined]
        await mirai.connect()
        await mirai.push(friend_message(20001, "你好", 1))
        await mirai.wait_commands(1)
        status, report = await healthz(web_port(config))
        [link] = report["platforms"][0]["links"]
        assert status == 200 and link["state"] == "up" and link["last_event"] is not None
        assert report["platforms"][0]["outbox"] == 0
        await mirai.close()
        await eventually(lambda: not app.adapters["mirai"].connected)
        status, report = await healthz(web_port(config))
        assert status == 200 and report["platforms"][0]["links"][0]["state"] == "listening"
    finally:
        await app.stop()


async def test_healthz_never_shows_a_secret(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    config = write_config({"mirai": {"reverse_ws_token": "token-that-must-not-show"}})
    app = await start_bot(config)
    try:
        url = f"http://127.0.0.1:{web_port(config)}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        assert VERIFY_KEY not in text and "token-that-must-not-show" not in text and "sk-test" not in text
    finally:
        await app.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
async def test_the_bot_exits_1_when_every_platform_stopped_for_good(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    server = FakeMiraiServer("the-real-key", BOT_QQ)
    await server.start()
    try:
        config = write_config({"mirai": forward_to(server.base_url)})  # our api_key is not mirai's verifyKey
        process = await spawn_bot(config)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        log = stderr.decode()
        assert process.returncode == 1, log[-3000:]
        assert "every platform has stopped for good" in log and "api_key" in log
        assert VERIFY_KEY not in log and "the-real-key" not in log
    finally:
        await server.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
async def test_a_read_only_database_stops_start_up_with_one_line_naming_database_url(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    database = tmp_path / "ro.sqlite3"
    database.write_bytes(b"")
    config = write_config({"database": {"url": f"sqlite+aiosqlite:///file:{database}?mode=ro&uri=true"}})
    process = await spawn_bot(config)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    lines = [line for line in stderr.decode().splitlines() if "database.url" in line]
    assert process.returncode == 2, stderr.decode()[-2000:]
    assert len(lines) == 1 and "数据库无法写入" in lines[0] and "Traceback" not in stderr.decode()


async def test_a_taken_web_port_is_one_clear_start_up_error(write_config: Callable[..., Path]) -> None:
    from core.errors import AdapterError

    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(AdapterError, match=r"\[web\] port"):
            await start_bot(write_config({"web": {"port": port}}))
    finally:
        blocker.close()
