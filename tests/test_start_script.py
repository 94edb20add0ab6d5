"""start.sh for real: a fresh copy, its own venv and install, then the bot answers through a fake peer."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BOT_QQ, VERIFY_KEY
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["bot.py", "start.sh", "requirements.txt", "config.example.toml", "core", "adapters", "conversation", "llm"]
SHIPPED += ["storage", "presets", "web"]


@pytest.mark.skipif(sys.platform == "win32", reason="start.sh is for Linux and macOS")
async def test_start_sh_installs_and_runs_the_bot(
    tmp_path: Path, write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for name in SHIPPED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / name)
    config = write_config(name="test.toml")
    port = int(next(line for line in config.read_text().splitlines() if "reverse_ws_port" in line).split("=")[1])
    process = await asyncio.create_subprocess_exec(
        "bash", str(app / "start.sh"), "--config", str(config),
        cwd=app, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    mirai = FakeMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect(timeout=300)  # the first run creates .venv and installs the requirements
        await mirai.push(friend_message(20001, "一键启动", 1))
        [reply] = await mirai.wait_commands(1, timeout=30)
        assert sent_text(reply) == "echo: 一键启动"
        assert (app / ".venv" / "bin" / "python").exists() and (app / "config.toml").exists()
    finally:
        await mirai.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
    assert process.returncode == 0
