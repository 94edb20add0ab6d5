"""Config robustness: huge files load in linear time, unusable files named by the config are one-line
errors (never a traceback, a hang or a MemoryError), and control characters never reach a message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conversation.moderation import WordFilter
from core.config import MAX_WORDS_FILE_BYTES, ModerationSettings, Settings, load_config, loads_config
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
ACCOUNT = '[[openai.accounts]]\napi_key = "sk-1"\n'
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value


def toml_string(path: Path) -> str:
    """A TOML literal string holding `path` (Windows backslashes included)."""
    return "'" + str(path) + "'"


# --- linear unknown-key detection ---------------------------------------------------------------


def test_twenty_thousand_unknown_keys_warn_quickly() -> None:
    # Each unknown key used to rescan the whole file for its line: 20,000 keys took over 120 s.
    text = MINIMAL + "\n[trigger]\n" + "".join(f"unknown_{i} = {i}\n" for i in range(20_000))
    started = time.perf_counter()
    settings = loads_config(text)
    elapsed = time.perf_counter() - started
    assert len(settings.warnings) == 20_000
    assert settings.warnings[0] == "未知配置项 unknown key trigger.unknown_0 (line 10)"
    assert settings.warnings[-1] == "未知配置项 unknown key trigger.unknown_19999 (line 20009)"
    assert elapsed < 5, f"20,000 unknown keys took {elapsed:.1f} s"


def test_twenty_thousand_platform_array_entries_load_quickly() -> None:
    entry = "[[mirai]]\nqq = {qq}\napi_key = 'k'\nreverse_ws_port = 8554\nmystery = 1\n"
    text = "".join(entry.format(qq=i + 1) for i in range(20_000)) + ACCOUNT
    started = time.perf_counter()
    settings = loads_config(text)
    elapsed = time.perf_counter() - started
    assert len(settings.platform("mirai")) == 20_000
    assert len(settings.warnings) == 20_000
    assert settings.warnings[-1] == "未知配置项 unknown key mirai[19999].mystery (line 100000)"
    assert elapsed < 5, f"20,000 [[mirai]] entries took {elapsed:.1f} s"


def test_error_in_a_late_array_entry_is_located() -> None:
    entry = "[[mirai]]\nqq = {qq}\napi_key = 'k'\n"
    text = "".join(entry.format(qq=i + 1) for i in range(5_000)) + '[[mirai]]\nqq = "x"\napi_key = "k"\n' + ACCOUNT
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    assert caught.value.key == "mirai[5000].qq" and caught.value.line == 15_002


# --- [log] file ---------------------------------------------------------------------------------


def test_log_file_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    error = error_of(tmp_path, MINIMAL + f"\n[log]\nfile = {toml_string(tmp_path / 'logs')}\n")
    assert error.key == "log.file" and error.line == 10
    assert "directory" in error.one_line()


def test_log_file_under_a_regular_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x", encoding="utf-8")
    error = error_of(tmp_path, MINIMAL + f"\n[log]\nfile = {toml_string(tmp_path / 'plain.txt' / 'bot.log')}\n")
    assert error.key == "log.file" and error.line == 10


@pytest.mark.skipif(sys.platform == "win32", reason="device files")
def test_log_file_that_is_a_device_is_a_config_error(tmp_path: Path) -> None:
    # rotation renames the log file: /dev/null or /dev/stdout cannot be rotated
    error = error_of(tmp_path, MINIMAL + "\n[log]\nfile = '/dev/null'\n")
    assert error.key == "log.file" and "not a regular file" in error.one_line()


@pytest.mark.skipif(IS_ROOT or sys.platform == "win32", reason="root may write anywhere")
def test_log_file_in_a_read_only_folder_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        error = error_of(tmp_path, MINIMAL + f"\n[log]\nfile = {toml_string(folder / 'new' / 'bot.log')}\n")
    finally:
        folder.chmod(0o700)
    assert error.key == "log.file"


def test_log_file_with_a_stray_brace_is_a_config_error(tmp_path: Path) -> None:
    error = error_of(tmp_path, MINIMAL + "\n[log]\nfile = 'logs/{oops.log'\n")
    assert error.key == "log.file" and error.line == 10


def test_unreadable_log_rotation_is_a_config_error(tmp_path: Path) -> None:
    text = MINIMAL + f"\n[log]\nfile = {toml_string(tmp_path / 'logs' / 'bot.log')}\nrotation = 'whenever'\n"
    error = error_of(tmp_path, text)
    assert error.key == "log.rotation" and error.line == 11


def test_usable_log_file_is_accepted_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "bot.log"
    settings = load_config(write(tmp_path, MINIMAL + f"\n[log]\nfile = {toml_string(target)}\nrotation = '1 day'\n"))
    assert settings.log.file == str(target)
    assert not (tmp_path / "new").exists()  # setup_logging creates it; loading the config does not


def run_bot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bot.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("check", [False, True], ids=["start", "check"])
def test_log_directory_stops_the_bot_with_one_line(tmp_path: Path, check: bool) -> None:
    (tmp_path / "logs").mkdir()
    path = write(tmp_path, MINIMAL + "\n[log]\nfile = 'logs'\n")
    result = run_bot("--config", str(path), *(["--check"] if check else []), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "log.file" in line and "line 10" in line and "Traceback" not in result.stderr


# --- [moderation] words_file --------------------------------------------------------------------


def words_error(tmp_path: Path, target: Path | str) -> ConfigError:
    return error_of(tmp_path, MINIMAL + f"\n[moderation]\nwords_file = {toml_string(Path(target))}\n")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_words_file_is_a_config_error(tmp_path: Path) -> None:
    error = words_error(tmp_path, "/dev/zero")
    assert error.key == "moderation.words_file" and error.line == 10
    assert "not a regular file" in error.one_line()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_words_file_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "words.fifo"
    os.mkfifo(fifo)
    started = time.perf_counter()
    error = words_error(tmp_path, fifo)
    assert error.key == "moderation.words_file" and time.perf_counter() - started < 5


def test_directory_words_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "words").mkdir()
    error = words_error(tmp_path, tmp_path / "words")
    assert error.key == "moderation.words_file" and "directory" in error.one_line()


def test_missing_words_file_is_a_config_error(tmp_path: Path) -> None:
    error = words_error(tmp_path, tmp_path / "nowhere.txt")
    assert error.key == "moderation.words_file" and "not found" in error.one_line()


def test_huge_words_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as file:
        file.truncate(2 * 1024**3)  # 2 GB, sparse: no disk space used
    error = words_error(tmp_path, huge)
    assert error.key == "moderation.words_file" and "MB" in error.one_line()


def test_words_file_just_over_the_cap_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"w\n" * (MAX_WORDS_FILE_BYTES // 2 + 1))
    assert words_error(tmp_path, big).key == "moderation.words_file"


@pytest.mark.skipif(IS_ROOT or sys.platform == "win32", reason="root reads anything")
def test_unreadable_words_file_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "words.txt"
    secret.write_text("坏词\n", encoding="utf-8")
    secret.chmod(0)
    try:
        assert words_error(tmp_path, secret).key == "moderation.words_file"
    finally:
        secret.chmod(0o600)


def test_words_file_in_no_known_encoding_is_a_config_error(tmp_path: Path) -> None:
    garbage = tmp_path / "words.txt"
    garbage.write_bytes(b"\xff\xfe\xfa\x80" * 8)
    assert "UTF-8" in words_error(tmp_path, garbage).one_line()


def test_gbk_words_file_is_read_at_load_and_used_by_the_filter(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_bytes("# 注释\n坏词\n\n  另一个 \n".encode("gbk"))
    text = MINIMAL + f'\n[moderation]\nwords = ["敏感"]\nwords_file = {toml_string(words)}\n'
    settings = load_config(write(tmp_path, text))
    words.unlink()  # read once at load: the running bot no longer needs the file
    assert settings.moderation.blocked_words() == ["敏感", "坏词", "另一个"]
    word_filter = WordFilter(settings.moderation)
    assert word_filter.count == 3 and word_filter.mask("这是坏词") == "这是**"


def test_settings_built_without_the_loader_still_read_the_file(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("坏词\n", encoding="utf-8")
    assert WordFilter(ModerationSettings(words_file=str(words))).found("坏词")
    with pytest.raises(ConfigError) as caught:
        WordFilter(ModerationSettings(words_file=str(tmp_path / "gone.txt")))
    assert caught.value.key == "moderation.words_file"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_words_file_stops_check_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[moderation]\nwords_file = '/dev/zero'\n")
    result = run_bot("--config", str(path), "--check", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "moderation.words_file" in line and "Traceback" not in result.stderr


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_config_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(Path("/dev/zero"))
    assert "not a regular file" in caught.value.one_line()


# --- control characters -------------------------------------------------------------------------

CONTROL = ["\x1b", "\n", "\r", "\x00", "\x07", "\x85", "\u2028", "\u202e", "\ufeff"]


def assert_clean(line: str) -> None:
    assert not any(ch in line for ch in CONTROL), repr(line)


def test_unknown_key_with_control_characters_is_escaped_in_its_warning() -> None:
    settings = loads_config(MINIMAL + '\n[trigger]\n"a\\u001b[2Jb" = 1\n"forged\\nINFO all good" = 2\n')
    assert settings.warnings == [
        "未知配置项 unknown key trigger.a\\x1b[2Jb (line 10)",
        "未知配置项 unknown key trigger.forged\\nINFO all good (line 11)",
    ]


@pytest.mark.parametrize("char", CONTROL)
def test_config_error_line_never_holds_a_control_character(char: str) -> None:
    key = f"bad{char}key"
    error = ConfigError(f"presets.keywords.{key}", f"problem{char}here", 3)
    line = error.one_line()
    assert_clean(line)
    assert str(error) == line and "line 3" in line


def test_key_from_the_file_in_an_error_is_escaped() -> None:
    text = MINIMAL + '\n[presets.keywords]\n"x\\ny\\u001b[2J" = 5\n'
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    line = caught.value.one_line()
    assert_clean(line)
    assert "presets.keywords.x\\ny\\x1b[2J" in line and "line 10" in line


def test_toml_syntax_error_with_a_raw_control_character_is_escaped() -> None:
    with pytest.raises(ConfigError) as caught:
        loads_config(MINIMAL + "\n[response]\nreset = \x1b[2J\n")
    assert_clean(caught.value.one_line())
    assert caught.value.line == 10


# --- values of unexpected types end in one line, not a traceback -------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        "\n[response]\nmode = []\n",
        "\n[response]\nmode = {a = 1}\n",
        '\n[trigger]\nignore_regex = ["' + "(" * 300 + ")" * 300 + '"]\n',
        "\n[trigger]\nprefix = " + "[" * 2000 + "]" * 2000 + "\n",
        "\n[log]\nrotation = 5\n",
        "\n[mirai.nested]\n" + "a." * 3000 + "b = 1\n",
    ],
    ids=["mode-list", "mode-table", "deep-regex", "deep-array", "rotation-int", "deep-dotted"],
)
def test_odd_values_give_settings_or_one_config_error(extra: str) -> None:
    try:
        result = loads_config(MINIMAL + extra)
    except ConfigError as exc:
        assert "\n" not in exc.one_line()
    else:
        assert isinstance(result, Settings)


def test_a_validator_that_crashes_still_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import field_validator

    import core.config

    class Buggy(core.config.Section):
        size: Any = 0

        @field_validator("size")
        @classmethod
        def _crash(cls, value: Any) -> Any:
            return value + 1  # TypeError for a string: a bug, but not the user's traceback

    monkeypatch.setitem(core.config._PLATFORMS, "buggy", Buggy)
    with pytest.raises(ConfigError) as caught:
        loads_config(MINIMAL + '\n[buggy]\nsize = "x"\n')
    assert caught.value.key == "buggy" and caught.value.line == 9
    assert "TypeError" in caught.value.one_line()


# --- reverse_ws_token by default ----------------------------------------------------------------


def test_example_config_sets_the_reverse_ws_token_placeholder_the_adapter_warns_about() -> None:
    from adapters.mirai.reverse import EXAMPLE_REVERSE_WS_TOKEN

    [mirai] = load_config(ROOT / "config.example.toml").platform("mirai")
    assert mirai.reverse_ws_token == EXAMPLE_REVERSE_WS_TOKEN != ""


def test_readme_sends_the_token_through_mirai_api_http_extra_headers() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## 对接 Mirai（反向 WebSocket）", 1)[1].split("\n## ", 1)[0]
    toml_block = section.split("```toml", 1)[1].split("```", 1)[0]
    yaml_block = section.split("```yaml", 1)[1].split("```", 1)[0]
    token = toml_block.split('reverse_ws_token = "', 1)[1].split('"', 1)[0]
    # mirai-api-http's reverse-ws destination: extraHeaders is a map of header name -> value
    assert re.search(r"^        extraHeaders:\s*(#.*)?$", yaml_block, re.MULTILINE)
    assert f'          Authorization: "Bearer {token}"\n' in yaml_block
