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
SHIPPED += ["storage", "presets", "web", "voice", "tools"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="start.sh is for Linux and macOS")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the shipped files for the whole module, so later cases reuse the installed .venv."""
    app = tmp_path_factory.mktemp("start") / "app"
    app.mkdir()
    for name in SHIPPED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / name)
    return app


def reverse_ws_port(config: Path) -> int:
    return int(next(line for line in config.read_text().splitlines() if "reverse_ws_port" in line).split("=")[1])


async def run_start_sh(app: Path, args: list[str], port: int, log: Path, text: str) -> str:
    """Run start.sh, chat once through a fake Mirai, stop it; return everything it printed."""
    # a file, not a pipe: pip's output could fill a pipe nobody reads and stall the script
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            "bash", str(app / "start.sh"), *args,
            cwd=app, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    mirai = FakeMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect(timeout=300)  # a run that (re)creates .venv installs the requirements first
        await mirai.push(friend_message(20001, text, 1))
        [reply] = await mirai.wait_commands(1, timeout=30)
        assert sent_text(reply) == f"echo: {text}"
    finally:
        await mirai.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
    output = await asyncio.to_thread(log.read_text, encoding="utf-8", errors="replace")
    assert process.returncode == 0, output
    return output


async def test_start_sh_installs_and_runs_the_bot(
    app: Path, tmp_path: Path, write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    config = write_config(name="test.toml")
    await run_start_sh(app, ["--config", str(config)], reverse_ws_port(config), tmp_path / "log", "一键启动")
    assert (app / ".venv" / "bin" / "python").exists() and (app / "config.toml").exists()


async def test_start_sh_rebuilds_a_venv_from_an_old_python(
    app: Path, tmp_path: Path, write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    """A .venv left by Python 3.8 (here: an interpreter that only claims to be 3.8) is rebuilt, not reused."""
    bin_dir = app / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").unlink(missing_ok=True)
    (bin_dir / "python").write_text('#!/bin/sh\necho "Python 3.8.0"\n', encoding="utf-8")
    (bin_dir / "python").chmod(0o755)
    shutil.copy2(app / "requirements.txt", app / ".venv" / "requirements.installed")  # would skip pip if kept
    config = write_config(name="test.toml")
    output = await run_start_sh(app, ["--config", str(config)], reverse_ws_port(config), tmp_path / "log", "旧环境")
    assert "正在删除并重建 .venv" in output and "recreating .venv" in output
    assert (bin_dir / "python").is_symlink() or b"Python 3.8.0" not in (bin_dir / "python").read_bytes()


async def test_start_sh_rebuilds_a_venv_whose_python_is_gone(app: Path) -> None:
    """A dangling .venv/bin/python (its Python was uninstalled) is rebuilt too; only the check is run here."""
    probe = app / "probe"
    probe.mkdir()
    (probe / ".venv" / "bin").mkdir(parents=True)
    (probe / ".venv" / "bin" / "python").symlink_to(probe / "no-such-python3.8")
    # the script up to the venv decision, so this case needs no second install
    script = (app / "start.sh").read_text(encoding="utf-8").split('if [ -z "$PYTHON" ] && ! python_ok', 1)[0]
    (probe / "check.sh").write_text(script, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        "bash", str(probe / "check.sh"), cwd=probe, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output
    assert "recreating .venv" in output.decode() and not (probe / ".venv").exists()


async def test_start_sh_uses_config_cfg_when_config_toml_is_missing(
    app: Path, tmp_path: Path, write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    """A v2 user's config.cfg is used as is: not overwritten by the example, which would start with its values."""
    config = write_config(name="config.cfg")
    shutil.copy2(config, app / "config.cfg")
    (app / "config.toml").unlink(missing_ok=True)
    try:
        output = await run_start_sh(app, [], reverse_ws_port(config), tmp_path / "log", "旧配置")
    finally:
        (app / "config.cfg").unlink()
    assert "使用 v2 的 config.cfg 启动" in output
    assert not (app / "config.toml").exists()
