"""The bot as a process: console chat, start-up time, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BOT_QQ, VERIFY_KEY, spawn_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


async def test_console_chats_through_the_same_pipeline(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    process = await spawn_bot(write_config(), "--console")
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("你好\n".encode())
    answer = b""
    while b"echo: " not in answer:  # reset would cancel a running answer: wait for this one first
        answer += await asyncio.wait_for(process.stdout.readline(), 30)
    stdout, stderr = await asyncio.wait_for(process.communicate("重置会话\nexit\n".encode()), 30)
    assert process.returncode == 0, stderr.decode()
    out = (answer + stdout).decode()
    assert "echo: 你好" in out and "会话已重置。" in out
    assert fake_llm.requests[0]["body"]["messages"][-1] == {"role": "user", "content": "你好"}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_sigterm_stops_within_five_seconds_and_keeps_history(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    config = write_config({"log": {"file": "logs/bot.log"}})  # relative to the bot's working folder
    log_file = config.parent / "logs" / "bot.log"
    port = int(next(line for line in config.read_text().splitlines() if "reverse_ws_port" in line).split("=")[1])
    process = await spawn_bot(config)
    mirai = FakeMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect(timeout=15)
        await mirai.push(friend_message(20001, "你好", 1))
        [command] = await mirai.wait_commands(1)
        assert sent_text(command) == "echo: 你好"
        fake_llm.latency = 60  # a request is in flight when the signal comes
        await mirai.push(friend_message(20001, "慢问题", 2))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
        assert time.monotonic() - started < 5
        assert process.returncode == 0
    finally:
        await mirai.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = (await process.stderr.read()).decode()  # type: ignore[union-attr]
    assert "stopped" in stderr and "Traceback" not in stderr
    assert (config.parent / "data" / "bot.sqlite3").stat().st_size > 0
    logged = log_file.read_text(encoding="utf-8")
    assert "connected to mirai-api-http" in logged and "stopped" in logged
    assert "sk-test" not in logged and VERIFY_KEY not in logged


async def test_check_reports_every_part(write_config: Callable[..., Path], fake_llm: FakeOpenAI) -> None:
    from tests.fakes.mirai_server import FakeMiraiServer

    server = FakeMiraiServer(VERIFY_KEY, BOT_QQ)
    await server.start()
    url = server.base_url
    forward = {"reverse_ws_port": None, "reverse_ws_host": None, "ws_url": url, "http_url": url}
    try:
        good = write_config({"mirai": forward})
        process = await spawn_bot(good, "--check")
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        table = stdout.decode()
        assert process.returncode == 0, table + stderr.decode()[-2000:]
        assert re.search(r"^OK +database", table, re.M) and re.search(r"^OK +model account main", table, re.M)
        assert re.search(r"^OK +platform mirai", table, re.M)
        fake_llm.fail_key("sk-test-1")
        broken = write_config({"mirai": {**forward, "api_key": "wrong-key"}}, name="broken.toml")
        process = await spawn_bot(broken, "--check")
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
        table = stdout.decode()
        assert process.returncode == 1
        assert re.search(r"^FAIL +model account main +auth", table, re.M), table
        assert re.search(r"^FAIL +platform mirai", table, re.M), table
    finally:
        await server.stop()
