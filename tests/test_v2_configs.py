"""chatgpt-mirai-qq-bot v2 config files (tests/samples/v2/) start the real bot.py; v2 leftovers get one line each."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from core.config import WEB_LOGIN_SKIPPED, load_config
from core.errors import ConfigError
from tests.conftest import ROOT, free_port, spawn_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

SAMPLES = Path(__file__).parent / "samples" / "v2"
V2_VERIFY_KEY = "1234567890"
QQ = 123456


def fill_qq(text: str) -> str:
    """What every v2 user did first: put real numbers where the example has Chinese placeholders."""
    text = re.sub(r"^qq = 请修改.*$", f"qq = {QQ}", text, flags=re.M)
    return re.sub(r"^manager_qq = 请修改.*$", "manager_qq = 10001", text, flags=re.M)


def local_tables(tmp_path: Path, fake_llm: FakeOpenAI, account: bool = True) -> str:
    """An API-key account on the fake LLM, plus a database and web port inside the test's folder."""
    (tmp_path / "presets").mkdir(exist_ok=True)
    text = f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path / "data" / "bot.sqlite3"}"

[web]
port = {free_port()}
"""
    if account:
        text += f"""
[openai.gpt3_params]
stream = false

[[openai.accounts]]
api_key = "sk-test-1"
api_endpoint = "{fake_llm.base_url}"
model = "m1"
"""
    return text


async def chat_once(process: asyncio.subprocess.Process, port: int, text: str) -> str:
    """Connect as mirai-api-http with v2's default verifyKey, send one private message, return the reply."""
    mirai = FakeMirai(f"ws://127.0.0.1:{port}/", V2_VERIFY_KEY, QQ)
    try:
        await mirai.connect(timeout=15)
        await mirai.push(friend_message(20001, text, 1))
        [command] = await mirai.wait_commands(1, timeout=15)
        return sent_text(command)
    finally:
        await mirai.close()


async def stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.terminate()
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    return stderr.decode()


async def test_v2_5_3_example_starts_with_default_api_key_and_skips_web_login(
    tmp_path: Path, fake_llm: FakeOpenAI
) -> None:
    text = fill_qq((SAMPLES / "config.example.v2.5.3.cfg").read_text(encoding="utf-8"))
    port = free_port()
    # the example's own port is taken on a shared test machine; the host stays v2's 0.0.0.0
    text = text.replace("reverse_ws_port = 8554", f"reverse_ws_port = {port}")
    config = tmp_path / "config.cfg"
    config.write_text(text + local_tables(tmp_path, fake_llm), encoding="utf-8")
    process = await spawn_bot(config)
    try:
        assert await chat_once(process, port, "你好") == "echo: 你好"
    finally:
        stderr = await stop(process)
    assert "Traceback" not in stderr
    assert stderr.count(WEB_LOGIN_SKIPPED) == 1
    assert "SECURITY: [mirai] api_key is still the example value 1234567890" in stderr


def test_v2_5_3_example_with_only_a_web_login_account_is_one_clear_error(tmp_path: Path) -> None:
    text = fill_qq((SAMPLES / "config.example.v2.5.3.cfg").read_text(encoding="utf-8"))
    config = tmp_path / "config.cfg"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.key == "openai.accounts" and WEB_LOGIN_SKIPPED in caught.value.problem
    assert caught.value.line == text.splitlines().index("[[openai.accounts]]") + 1


async def test_last_v2_example_starts_once_a_platform_and_account_are_added(
    tmp_path: Path, fake_llm: FakeOpenAI
) -> None:
    port = free_port()
    text = (SAMPLES / "config.example.last-v2.cfg").read_text(encoding="utf-8")
    # v2's WebUI wrote these; a user of the bare file adds them by hand
    added = f'\n[mirai]\nqq = {QQ}\nreverse_ws_host = "127.0.0.1"\nreverse_ws_port = {port}\n'
    config = tmp_path / "config.cfg"
    config.write_text(text + added + local_tables(tmp_path, fake_llm), encoding="utf-8")
    process = await spawn_bot(config)
    try:
        assert await chat_once(process, port, "你好") == "echo: 你好"
    finally:
        stderr = await stop(process)
    assert "Traceback" not in stderr and "1234567890" in stderr


async def test_v2_go_cqhttp_quickstart_config_passes_check(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    text = fill_qq((SAMPLES / "config.example.go-cqhttp.v2.5.3.cfg").read_text(encoding="utf-8"))
    # v2 listened on 0.0.0.0:8566; a test listens on a free loopback port
    text = text.replace("[onebot]\n", f'[onebot]\nreverse_ws_host = "127.0.0.1"\nreverse_ws_port = {free_port()}\n')
    config = tmp_path / "config.cfg"
    config.write_text(text + local_tables(tmp_path, fake_llm), encoding="utf-8")
    process = await spawn_bot(config, "--check")
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stdout.decode() + stderr.decode()
    assert re.search(r"^OK +platform onebot", stdout.decode(), re.M), stdout.decode()
    assert stderr.decode().count(WEB_LOGIN_SKIPPED) == 1


def every_section(tmp_path: Path, fake_llm: FakeOpenAI) -> tuple[Path, int]:
    port = free_port()
    text = (SAMPLES / "config.every-section.v2.5.3.cfg").read_text(encoding="utf-8")
    for name, value in {
        "<MIRAI_PORT>": str(port),
        "<ONEBOT_PORT>": str(free_port()),
        "<HTTP_PORT>": str(free_port()),
        "<OPENAI_ENDPOINT>": fake_llm.base_url,
    }.items():
        text = text.replace(name, value)
    text = text.replace("[mirai]\n", '[mirai]\nreverse_ws_host = "127.0.0.1"\n', 1)
    config = tmp_path / "config.cfg"
    config.write_text(text + local_tables(tmp_path, fake_llm, account=False), encoding="utf-8")
    return config, port


async def test_every_v2_section_starts_and_ping_fills_v2_placeholders(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    config, port = every_section(tmp_path, fake_llm)
    process = await spawn_bot(config)
    try:
        answer = await chat_once(process, port, "ping")
    finally:
        stderr = await stop(process)
    current = answer.splitlines()[0]  # {current_ai} is our {account}: the chosen one, or "auto" over the list
    assert current.startswith("当前AI：") and "account1" in current and current.endswith(" / 当前语音：无"), answer
    assert "可用AI：\naccount1" in answer, answer
    # [text_to_speech] engine = "azure" is spoken by Edge TTS; default_voice_prefix picks the voices offered
    voices = answer.split("可用语音：\n", 1)[1].split("、")
    assert voices[0] == "xiaoxiao" and "hsiaochen" in voices and "hiugaai" not in voices, answer
    assert "{" not in answer
    assert "Traceback" not in stderr
    assert stderr.count(WEB_LOGIN_SKIPPED) == 3
    assert "Azure TTS 已改用免费的 Edge TTS" in stderr
    for section in ("bing", "bard", "azure", "yiyan", "chatglm", "poe", "slack", "xinghuo", "baiducloud"):
        [line] = [line for line in stderr.splitlines() if f"[{section}]" in line]
        assert "不再支持" in line and "not supported" in line
    assert "[[openai.accounts]] 中任意 OpenAI 兼容接口" in next(x for x in stderr.splitlines() if "[bing]" in x)
    # one line per dropped section, never the generic line for each key inside it
    assert "unknown key bing" not in stderr and "unknown key sdwebui" not in stderr


async def test_check_lists_each_unsupported_v2_section(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    config, _ = every_section(tmp_path, fake_llm)
    process = await spawn_bot(config, "--check")
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    table = stdout.decode()
    for section in ("bing", "bard", "poe", "telegram", "sdwebui", "vits"):
        assert re.search(rf"^SKIP +unsupported v2 setting +\[{section}\]", table, re.M), table
    assert re.search(r"^OK +model account account1", table, re.M), table
    assert "Traceback" not in stderr.decode()


def test_v2_never_reset_and_bilingual_range_errors(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    base = f'[mirai]\nqq = {QQ}\n\n[[openai.accounts]]\napi_key = "sk-1"\n\n[system]\n'
    config = tmp_path / "config.toml"
    config.write_text(base + "auto_reset_timeout_seconds = -1\n", encoding="utf-8")
    assert load_config(config).system.auto_reset_timeout_seconds == 0  # 0: never
    config.write_text(base + "auto_reset_timeout_seconds = -5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problem == "应大于或等于 0 (must be greater than or equal to 0)"
    config.write_text(base.replace("[system]\n", '[trigger]\nrequire_mention = "always"\n'), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problem.startswith("应为以下之一 (must be one of): 'at'")


async def test_config_cfg_is_used_when_config_toml_is_missing(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    port = free_port()
    text = f'[mirai]\nqq = {QQ}\nreverse_ws_host = "127.0.0.1"\nreverse_ws_port = {port}\n'
    (tmp_path / "config.cfg").write_text(text + local_tables(tmp_path, fake_llm), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bot.py"),
        "--check",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert "using config.cfg" in stderr.decode()
    assert re.search(r"^OK +config +config\.cfg$", stdout.decode(), re.M), stdout.decode()


async def test_no_platform_error_names_every_platform_after_the_v2_lines(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    config = tmp_path / "config.cfg"
    config.write_text("[bing]\nmax_messages = 30\n" + local_tables(tmp_path, fake_llm), encoding="utf-8")
    process = await spawn_bot(config)
    _, stderr_bytes = await asyncio.wait_for(process.communicate(), 30)
    stderr = stderr_bytes.decode()
    assert process.returncode == 2
    assert "[bing]" in stderr.split("没有启用任何聊天平台")[0]
    last = stderr.strip().splitlines()[-1]
    for name in ("mirai", "onebot", "milky", "satori", "qqbot"):
        assert f"[{name}]" in last, last
