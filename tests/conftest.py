"""Shared fixtures: a fake OpenAI server, a config file writer, and the bot built from that file."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import settings
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot import App  # noqa: E402
from core.config import load_config  # noqa: E402
from core.metrics import PREFIX  # noqa: E402
from tests.fakes.image_server import FakeImageServer  # noqa: E402
from tests.fakes.mirai_peer import FakeMirai  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

BOT_QQ = 10001
VERIFY_KEY = "test-verify-key"

# Fuzzing explores new inputs on every local run; CI replays the same ones (a red CI must be reproducible, and
# nothing lands on a red CI). A bug found locally gets its own example test.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until `predicate()` is true (checked every 10 ms); fails the test after `timeout` seconds."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


def free_port() -> int:
    """A port nobody listens on right now (the bot must be given a fixed one by its config)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base` (tables merge, other values replace, None removes)."""
    out = dict(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every example of a property test (Hypothesis runs plain functions)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def media() -> AsyncIterator[FakeImageServer]:
    """A local file server for pictures and voices the platforms "store" (`put`, `/files/<name>`)."""
    server = FakeImageServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def write_config(tmp_path: Path, fake_llm: FakeOpenAI) -> Callable[..., Path]:
    """Write a config.toml for a bot on 127.0.0.1 talking to the fake LLM; keyword tables override."""

    def write(extra: dict[str, Any] | None = None, name: str = "config.toml") -> Path:
        presets = tmp_path / "presets"
        presets.mkdir(exist_ok=True)
        (presets / "default.txt").write_text("system: 你是测试机器人。", encoding="utf-8")
        doc: dict[str, Any] = {
            "mirai": {
                "qq": BOT_QQ,
                "api_key": VERIFY_KEY,
                "reverse_ws_host": "127.0.0.1",
                "reverse_ws_port": free_port(),
            },
            "openai": {
                "accounts": [
                    {"name": "main", "api_key": "sk-test-1", "api_endpoint": fake_llm.base_url, "model": "m1"}
                ],
                "gpt_params": {"stream": False, "timeout": 5},
            },
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.sqlite3'}"},
            "presets": {"scan_dir": str(presets)},
            "response": {"timeout": 20, "max_timeout": 30},
            "web": {"port": free_port()},
        }
        doc = merge(doc, extra or {})
        path = tmp_path / name
        path.write_text(tomlkit.dumps(doc), encoding="utf-8")
        return path

    return write


class RunningBot:
    """A started App plus a FakeMirai connected to it."""

    def __init__(self, app: App, mirai: FakeMirai) -> None:
        self.app = app
        self.mirai = mirai


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log message emitted during the test."""
    lines: list[str] = []
    sink_id = logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{message}")
    yield lines
    logger.remove(sink_id)


async def spawn_bot(config: Path, *args: str) -> asyncio.subprocess.Process:
    """Run `python bot.py --config <config> [args]` as its own process, in the config's folder."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bot.py"),
        "--config",
        str(config),
        *args,
        cwd=config.parent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def start_bot(config: Path) -> App:
    """Build and start the bot from a config file, as `python bot.py --config` does."""
    app = App(load_config(config))
    await app.start()
    return app


def mirai_url(app: App) -> str:
    adapter = app.adapters["mirai"]
    return f"ws://127.0.0.1:{adapter.port}/any/path"  # type: ignore[attr-defined]


@pytest.fixture
async def bot(write_config: Callable[..., Path]) -> AsyncIterator[RunningBot]:
    """The default bot, with a fake mirai-api-http connected and verified."""
    app = await start_bot(write_config())
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    yield RunningBot(app, mirai)
    await mirai.close()
    await app.stop()


def metric_samples(app: App, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The `/metrics` samples of counter `name`, by their sorted labels (parsed by prometheus-client)."""
    text = app.metrics.exposition().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{PREFIX}_{name}_total"
    }
