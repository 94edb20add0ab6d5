"""Config loading: errors name the key and its line, unknown keys warn, v2 files keep working."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Settings, load_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = """\
[mirai]
qq = 123456
api_key = "k"
reverse_ws_port = 8554

[[openai.accounts]]
api_key = "sk-1"
"""


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "config.toml"
    path.write_bytes(text.encode(encoding))
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL))
    [mirai] = settings.platform("mirai")
    assert mirai.qq == 123456 and mirai.reverse_ws_host == "0.0.0.0" and mirai.reverse_ws_port == 8554
    [account] = settings.openai.accounts
    assert account.name == "account1" and account.api_endpoint == "https://api.openai.com/v1"
    assert settings.database.url == "sqlite+aiosqlite:///data/bot.sqlite3"
    assert settings.trigger.reset_command == ["重置会话"] and settings.trigger.require_mention == "at"
    assert settings.conversation.group_scope == "member"
    assert settings.warnings == []


def test_missing_required_key_names_it_and_its_table(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL.replace("qq = 123456\n", ""))
    assert error.key == "mirai.qq" and error.line == 1


def test_missing_mirai_api_key_is_v2_default(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL.replace('api_key = "k"\n', "")))
    assert settings.platform("mirai")[0].api_key.get_secret_value() == "1234567890"
    assert any("1234567890" in warning for warning in settings.warnings)


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL.replace("qq = 123456", 'qq = "请填写机器人的 QQ 号"'))
    assert error.key == "mirai.qq" and error.line == 2
    assert "mirai.qq" in error.one_line() and "line 2" in error.one_line() and "\n" not in error.one_line()


def test_port_out_of_range(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL.replace("8554", "70000"))
    assert error.key == "mirai.reverse_ws_port" and error.line == 4


def test_bad_choice_in_later_section(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL + '\n[trigger]\nrequire_mention = "always"\n')
    assert error.key == "trigger.require_mention" and error.line == 10


def test_second_account_error_is_located(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL + '\n[[openai.accounts]]\nname = "b"\nmodel = "x"\n')
    assert error.key == "openai.accounts[1].api_key" and error.line == 9


def test_no_accounts_is_an_error(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL.split("[[openai")[0] + "[openai]\nmax_retries = 1\n")
    assert error.key == "openai.accounts" and error.line == 6


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL + "\n[response]\nquote = yes please\n")
    assert error.line == 10


def test_unknown_keys_warn_with_line(tmp_path: Path) -> None:
    settings = load_config(
        write(tmp_path, MINIMAL.replace('api_key = "k"', 'api_key = "k"\nmystery = 1') + "\n[extra]\na = 1\n")
    )
    assert "未知配置项 unknown key mirai.mystery (line 4)" in settings.warnings
    assert any(w.startswith("未知配置项 unknown key extra") for w in settings.warnings)


def test_v2_spellings_are_understood(tmp_path: Path) -> None:
    v2 = MINIMAL + '\n[openai]\napi_endpoint = "https://proxy.example/v1"\n\n[openai.gpt3_params]\ntemperature = 0.9\n'
    v2 = v2.replace('[[openai.accounts]]\napi_key = "sk-1"\n', "")
    v2 += '\n[[openai.accounts]]\napi_key = "sk-1"\n'
    settings = load_config(write(tmp_path, v2))
    assert settings.openai.gpt_params.temperature == 0.9
    assert settings.openai.accounts[0].api_endpoint == "https://proxy.example/v1"


def test_several_mirai_accounts_as_array_of_tables(tmp_path: Path) -> None:
    text = MINIMAL.replace("[mirai]", "[[mirai]]") + '\n[[mirai]]\nqq = "x"\napi_key = "k2"\n'
    error = error_of(tmp_path, text)
    assert error.key == "mirai[1].qq" and error.line == 10
    settings = load_config(write(tmp_path, text.replace('qq = "x"', "qq = 42\nreverse_ws_port = 8555")))
    assert [m.qq for m in settings.platform("mirai")] == [123456, 42]
    assert [name for name, _ in settings.platforms()] == ["mirai", "mirai"]


def test_disabled_section_is_not_started(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL.replace("[mirai]", "[mirai]\nenable = false")))
    assert settings.platforms() == []


def test_windows_gbk_file_loads(tmp_path: Path) -> None:
    text = MINIMAL + '\n[response]\nreset = "好的，已经忘掉了"\n'
    settings = load_config(write(tmp_path, text, encoding="gbk"))
    assert settings.response.reset == "好的，已经忘掉了"


def test_example_config_is_valid_and_every_key_is_commented() -> None:
    path = ROOT / "config.example.toml"
    settings = load_config(path)
    assert settings.warnings == []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^[a-z_]+\s*=", line):
            previous = lines[number - 1].strip()
            assert previous.startswith("#"), f"config.example.toml line {number + 1} ({line}) has no comment"
    text = path.read_text(encoding="utf-8")
    for section, model in Settings.model_fields.items():
        if section in ("path", "warnings"):
            continue
        annotation = model.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        for key in getattr(inner, "model_fields", {}):
            if key in ("accounts", "gpt_params"):
                continue
            # a key, or a nested table documented by its header ([section.key] or [[section.key]])
            pattern = rf"^#?\s*({key}\s*=|\[\[?{section}\.{key}\]\]?)"
            assert re.search(pattern, text, re.MULTILINE), f"{section}.{key} missing from config.example.toml"


def run_bot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bot.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_missing_config_file_tells_user_to_copy_the_example(tmp_path: Path) -> None:
    result = run_bot(cwd=tmp_path)
    assert result.returncode == 2
    assert "config.example.toml" in result.stderr and "config.toml" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_value_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("8554", '"eight"'))
    result = run_bot("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "mirai.reverse_ws_port" in line and "line 4" in line


def test_placeholder_or_full_width_api_key_is_refused(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL.replace('api_key = "sk-1"', 'api_key = "sk-请填写你的key"'))
    assert error.key == "openai.accounts[0].api_key" and error.line == 7
    assert "sk-" not in error.one_line()  # the key is never echoed


def test_endpoint_without_scheme_is_refused(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL + 'api_endpoint = "api.deepseek.com/v1"\n')
    assert error.key == "openai.accounts[0].api_endpoint" and error.line == 8


def test_web_login_account_is_skipped_and_later_errors_keep_their_file_index(tmp_path: Path) -> None:
    web_login = '[[openai.accounts]]\nemail = "a@example.com"\npassword = "p"\n\n'
    text = MINIMAL.replace("[[openai.accounts]]\n", web_login + "[[openai.accounts]]\n")
    settings = load_config(write(tmp_path, text))
    assert [a.api_key.get_secret_value() for a in settings.openai.accounts] == ["sk-1"]
    assert [w for w in settings.warnings if "网页登录账号不再支持" in w] == [
        "openai.accounts[0]: 网页登录账号不再支持，请改用 API Key (web-login accounts are no longer supported;"
        " use an API key) (line 6)"
    ]
    error = error_of(tmp_path, text.replace('api_key = "sk-1"', 'api_key = "sk-1"\nmax_concurrency = 0'))
    assert error.key == "openai.accounts[1].max_concurrency" and error.line == 12
    assert error.problem == "应大于或等于 1 (must be greater than or equal to 1)"
