"""Presets: v2's file format, user_send templates, encodings, keywords aliases, default preset and rescans."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from loguru import logger
from pydantic import ValidationError

import conversation.presets as presets_module
from conversation.presets import (
    MAX_PRESET_BYTES,
    Preset,
    PresetBook,
    PresetError,
    check_preset,
    check_preset_name,
    parse_preset,
)
from core.config import PresetSettings, validate
from llm.base import ChatTurn

NOW = datetime(2026, 11, 21, 9, 5)


@pytest.fixture
def logs() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of everything logged during the test."""
    lines: list[tuple[str, str]] = []
    sink_id = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    yield lines
    logger.remove(sink_id)


def warnings_in(logs: list[tuple[str, str]]) -> list[str]:
    return [message for level, message in logs if level == "WARNING"]


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def book(folder: Path, **settings: object) -> PresetBook:
    return PresetBook(PresetSettings(scan_dir=str(folder), **settings))


# --- parsing ---------------------------------------------------------------------------------------


def test_all_roles_in_order() -> None:
    preset = parse_preset("system: 你是猫娘。\n\nuser: 你好\n\nassistant: 喵~ 你好！", "猫娘")
    assert preset.name == "猫娘"
    assert preset.turns == (
        ChatTurn("system", "你是猫娘。"),
        ChatTurn("user", "你好"),
        ChatTurn("assistant", "喵~ 你好！"),
    )
    assert preset.user_send == "" and preset.path == ""


def test_full_width_colon_and_any_case() -> None:
    preset = parse_preset("System：设定\n\nUSER ： 问\n\nAssistant:答")
    assert preset.turns == (ChatTurn("system", "设定"), ChatTurn("user", "问"), ChatTurn("assistant", "答"))


def test_block_without_role_word_continues_the_previous_one() -> None:
    text = "system: 第一段\n第一段第二行\n\n第二段\n\n\n\nnote: 第三段\n\nuser: 问题\n\n补充"
    preset = parse_preset(text)
    assert preset.turns == (
        # An unknown word before a colon is just text.
        ChatTurn("system", "第一段\n第一段第二行\n\n第二段\n\nnote: 第三段"),
        ChatTurn("user", "问题\n\n补充"),
    )


def test_file_without_role_words_is_one_system_prompt() -> None:
    preset = parse_preset("你是一个助手。\n\n请简短回答：不要超过三句话。\n")
    assert preset.turns == (ChatTurn("system", "你是一个助手。\n\n请简短回答：不要超过三句话。"),)


def test_leading_text_before_the_first_role_is_a_system_prompt() -> None:
    preset = parse_preset("背景设定\n\nuser: 你好")
    assert preset.turns == (ChatTurn("system", "背景设定"), ChatTurn("user", "你好"))


def test_im_end_markers_crlf_bom_and_blank_lines_with_spaces() -> None:
    text = "\ufeffsystem: 设定<|im_end|>\r\n第二行\r\n  \r\nuser: 你好<|im_end|>\r\n\r\nassistant: 嗯\r"
    preset = parse_preset(text)
    assert preset.turns == (
        ChatTurn("system", "设定\n第二行"),
        ChatTurn("user", "你好"),
        ChatTurn("assistant", "嗯"),
    )


def test_empty_role_block_takes_the_text_after_it_and_empty_file_has_no_turns() -> None:
    assert parse_preset("system:\n\n真正的设定").turns == (ChatTurn("system", "真正的设定"),)
    assert parse_preset("user:\n\nassistant: 答").turns == (ChatTurn("assistant", "答"),)
    assert parse_preset("").turns == () and parse_preset(" \n\n ").turns == ()


def test_voice_blocks_are_ignored() -> None:
    preset = parse_preset("system: 设定\n\nvoice: zh-CN-XiaoxiaoNeural\n\n继续设定")
    assert preset.turns == (ChatTurn("system", "设定\n\n继续设定"),)


# --- user_send ----------------------------------------------------------------------------------


def test_user_send_template_fills_every_placeholder() -> None:
    preset = parse_preset("system: 设定\n\nUser_Send： [{date} {time}] {nickname} 说：{prompt}")
    assert preset.turns == (ChatTurn("system", "设定"),)
    assert preset.user_send == "[{date} {time}] {nickname} 说：{prompt}"
    assert preset.format_prompt("你好", "小明", NOW) == "[2026年11月21日 09:05] 小明 说：你好"


def test_user_send_leaves_other_braces_and_the_users_text_alone() -> None:
    preset = parse_preset('user_send: {nickname}: {prompt} {foo} {} {0} {"json": 1} {prompt')
    out = preset.format_prompt("我的 {date} 和 {nickname}", "阿{name}", NOW)
    assert out == '阿{name}: 我的 {date} 和 {nickname} {foo} {} {0} {"json": 1} {prompt'


def test_user_send_last_resp_and_continuation() -> None:
    preset = parse_preset("user_send: 上一句：{last_resp}\n\n这一句：{prompt}")
    assert preset.turns == ()
    assert preset.format_prompt("新问题", "x", NOW, last_reply="旧回答") == "上一句：旧回答\n\n这一句：新问题"
    assert preset.format_prompt("新问题", "x", NOW) == "上一句：\n\n这一句：新问题"


def test_without_template_the_prompt_is_unchanged_and_template_without_prompt_keeps_it() -> None:
    assert parse_preset("system: s").format_prompt("{date} 原样", "n", NOW) == "{date} 原样"
    assert parse_preset("user_send: 请用猫娘的语气回答").format_prompt("你好", "n", NOW) == "请用猫娘的语气回答\n你好"


def test_format_prompt_defaults_to_now() -> None:
    out = parse_preset("user_send: {date}|{prompt}").format_prompt("p", "n")
    assert out == f"{datetime.now():%Y年%m月%d日}|p"


def test_date_in_the_system_prompt_is_filled_when_the_turns_are_used() -> None:
    preset = parse_preset("system: 今天是{date}，现在{time}。{其他}")
    assert preset.dated_turns(NOW) == (ChatTurn("system", "今天是2026年11月21日，现在09:05。{其他}"),)
    assert preset.turns[0].content == "今天是{date}，现在{time}。{其他}"
    plain = parse_preset("system: 没有日期")
    assert plain.dated_turns(NOW) is plain.turns


# --- tokens -------------------------------------------------------------------------------------


def test_tokens_are_estimated_once_per_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = presets_module.estimate_tokens

    def counting(text: str) -> int:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(presets_module, "estimate_tokens", counting)
    write(tmp_path, "default.txt", "system: 你是一个聊天机器人。\n\nuser: 你好\n\nassistant: 你好！")
    presets = book(tmp_path)
    assert len(calls) == 3
    expected = real("你是一个聊天机器人。") + real("你好") + real("你好！")
    for _ in range(5):
        assert presets.tokens("default") == expected and presets.tokens() == expected
        presets.turns("default")
    assert len(calls) == 3


def test_tokens_count_the_date_as_it_will_be_sent() -> None:
    preset = parse_preset("system: 今天是{date}")
    assert preset.tokens == presets_module.estimate_tokens("今天是2026年11月21日")
    assert Preset("empty", ()).tokens == 0


# --- files --------------------------------------------------------------------------------------


def test_gbk_utf8_bom_and_utf16_files_load(tmp_path: Path) -> None:
    write(tmp_path, "gbk.txt", "system: 你是猫娘，说话带“喵”。", encoding="gbk")
    write(tmp_path, "bom.txt", "system: 带 BOM 的设定", encoding="utf-8-sig")
    write(tmp_path, "unicode.txt", "system: 记事本的 Unicode", encoding="utf-16")
    presets = book(tmp_path)
    assert presets.turns("gbk") == (ChatTurn("system", "你是猫娘，说话带“喵”。"),)
    assert presets.turns("bom") == (ChatTurn("system", "带 BOM 的设定"),)
    assert presets.turns("unicode") == (ChatTurn("system", "记事本的 Unicode"),)


def test_undecodable_file_is_one_warning_and_the_rest_still_load(tmp_path: Path, logs: list[tuple[str, str]]) -> None:
    write(tmp_path, "default.txt", "system: 正常")
    (tmp_path / "broken.txt").write_bytes(b"system: \xff\xff\xff")
    presets = book(tmp_path)
    [warning] = warnings_in(logs)
    assert "broken.txt" in warning and "UTF-8" in warning and "\n" not in warning
    assert presets.get("broken") is None and "broken" not in presets
    assert presets.turns() == (ChatTurn("system", "正常"),)
    [info] = [message for level, message in logs if level == "INFO"]
    assert "default" in info and "broken" not in info


def test_unreadable_file_is_one_warning(
    tmp_path: Path, logs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "default.txt", "system: 正常")
    locked = write(tmp_path, "locked.txt", "system: 读不到")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == locked.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    presets = book(tmp_path)
    [warning] = warnings_in(logs)
    assert "locked.txt" in warning and "Permission denied" in warning
    assert presets.names() == ["default"]


def test_scan_is_recursive_case_insensitive_and_shallow_names_win(tmp_path: Path, logs: list[tuple[str, str]]) -> None:
    write(tmp_path, "default.txt", "system: 顶层")
    write(tmp_path, "角色/猫娘.TXT", "system: 喵")
    write(tmp_path, "old/default.txt", "system: 旧的")
    write(tmp_path, "notes.md", "system: 不是预设")
    presets = book(tmp_path)
    assert presets.names() == ["default", "猫娘"]
    assert presets.turns("猫娘") == (ChatTurn("system", "喵"),)
    assert presets.turns("default") == (ChatTurn("system", "顶层"),)
    [warning] = warnings_in(logs)
    assert "old" in warning and "default" in warning
    assert presets.preset("猫娘").path == str(tmp_path / "角色" / "猫娘.TXT")


def test_missing_folder_warns_and_chats_without_a_preset(tmp_path: Path, logs: list[tuple[str, str]]) -> None:
    presets = book(tmp_path / "nope")
    [warning] = warnings_in(logs)
    assert "nope" in warning
    assert presets.turns() == () and presets.tokens() == 0 and presets.names() == []
    assert presets.default_preset() == Preset("default", ())


# --- keywords -----------------------------------------------------------------------------------


def test_keyword_to_a_preset_name_is_an_alias(tmp_path: Path) -> None:
    write(tmp_path, "catgirl.txt", "system: 喵")
    presets = book(tmp_path, keywords={"猫娘": "catgirl", "猫": "猫娘"})
    assert presets.get("猫娘") is presets.get("catgirl") is presets.get("猫")
    assert presets.turns("猫") == (ChatTurn("system", "喵"),)
    assert presets.names() == ["catgirl", "猫 → catgirl", "猫娘 → catgirl"]
    assert "猫" in presets and "狗" not in presets


def test_keyword_to_a_file_path_loads_that_file(tmp_path: Path) -> None:
    scan = tmp_path / "presets"
    write(scan, "default.txt", "system: 默认")
    elsewhere = write(tmp_path / "v2", "catgirl.txt", "system: 喵\n\nuser_send: {nickname}：{prompt}")
    presets = book(scan, keywords={"猫娘": str(elsewhere), "正常": str(scan / "default.txt")})
    cat = presets.get("猫娘")
    assert cat is not None and cat.name == "猫娘" and cat.path == str(elsewhere)
    assert cat.format_prompt("你好", "小明") == "小明：你好"
    # A keyword for a file the scan already found names that preset instead of loading it twice.
    assert presets.get("正常") is presets.get("default")
    assert presets.names() == ["default", "正常 → default", "猫娘"]


def test_keyword_file_name_relative_to_the_scan_folder(tmp_path: Path) -> None:
    write(tmp_path, "sub/cat.txt", "system: 喵")
    presets = book(tmp_path, keywords={"猫娘": "sub/cat.txt"})
    assert presets.get("猫娘") is presets.get("cat") is not None


def test_keyword_pointing_nowhere_warns_once_and_the_rest_works(tmp_path: Path, logs: list[tuple[str, str]]) -> None:
    write(tmp_path, "default.txt", "system: 默认")
    presets = book(tmp_path, keywords={"丢失": "presets/missing.txt", "a": "b", "b": "a", "ok": "default"})
    warnings = warnings_in(logs)
    assert len(warnings) == 3
    assert "丢失" in warnings[0] and "presets/missing.txt" in warnings[0]
    assert presets.get("丢失") is None and presets.get("a") is None
    assert presets.get("ok") is presets.get("default")


def test_keyword_wins_over_a_scanned_file_of_the_same_name(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 旧默认")
    write(tmp_path, "猫娘.txt", "system: 喵")
    presets = book(tmp_path, keywords={"default": "猫娘"})
    assert presets.turns() == (ChatTurn("system", "喵"),)
    assert presets.names() == ["default → 猫娘", "猫娘"]


# --- default preset and fallbacks ---------------------------------------------------------------


def test_default_preset_comes_from_settings(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 默认")
    write(tmp_path, "猫娘.txt", "system: 喵")
    presets = book(tmp_path, default="猫娘")
    assert presets.default_preset().name == "猫娘"
    assert presets.turns() == presets.turns("不存在") == (ChatTurn("system", "喵"),)
    assert presets.turns("default") == (ChatTurn("system", "默认"),)
    assert presets.preset("") is presets.preset("不存在") is presets.default_preset()
    assert presets.get("不存在") is None


def test_default_may_be_an_alias(tmp_path: Path) -> None:
    write(tmp_path, "catgirl.txt", "system: 喵")
    presets = book(tmp_path, default="猫娘", keywords={"猫娘": "catgirl"})
    assert presets.default_preset().name == "catgirl"


def test_missing_default_is_an_empty_preset(tmp_path: Path, logs: list[tuple[str, str]]) -> None:
    write(tmp_path, "猫娘.txt", "system: 喵")
    assert book(tmp_path).default_preset() == Preset("default", ())
    assert warnings_in(logs) == []  # no default.txt is a normal set-up
    presets = book(tmp_path, default="狗")
    assert presets.default_preset() == Preset("default", ()) and presets.turns() == ()
    [warning] = warnings_in(logs)
    assert "狗" in warning


# --- reload -------------------------------------------------------------------------------------


def test_reload_picks_up_new_changed_and_removed_files(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 一")
    old = write(tmp_path, "old.txt", "system: 旧")
    presets = book(tmp_path)
    write(tmp_path, "new.txt", "system: 新")
    write(tmp_path, "default.txt", "system: 二")
    old.unlink()
    assert presets.names() == ["default", "old"]
    presets.reload()
    assert presets.names() == ["default", "new"]
    assert presets.turns() == (ChatTurn("system", "二"),)
    assert presets.turns("old") == presets.turns()  # a conversation on a removed preset falls back


def test_reload_with_new_settings(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 默认")
    write(tmp_path, "猫娘.txt", "system: 喵")
    presets = book(tmp_path)
    presets.reload(PresetSettings(scan_dir=str(tmp_path), default="猫娘", keywords={"cat": "猫娘"}))
    assert presets.default_preset().name == "猫娘" and presets.get("cat") is presets.get("猫娘")


def test_a_bare_folder_still_works_as_the_constructor_argument(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 默认")
    assert PresetBook(tmp_path).turns() == PresetBook(str(tmp_path)).turns() == (ChatTurn("system", "默认"),)


# --- checks and changes made from the console -----------------------------------------------------


def problems_of(text: str) -> list[str]:
    return [str(problem) for problem in check_preset(text)]


def test_a_good_preset_has_no_problems() -> None:
    text = (
        "system: 你是猫。\n第二行\n\nUSER：你好\n\n  \t\nassistant: 喵\n\nvoice:\n\nuser_send: {nickname}说：{prompt}"
    )
    assert problems_of(text) == []
    assert problems_of("\ufeffsystem: 仅系统\r\n") == [] and problems_of("user_send: {prompt}") == []


def test_unknown_roles_and_paragraphs_without_a_role_name_their_line() -> None:
    text = "system: 设定\n\nbot: 你好\n\n这一段没写角色\n还有一行\n\r\n\u3000\nsytem：拼错\n\nhttps://example.com/x"
    assert problems_of(text) == [
        "第 3 行：未知的角色 bot:，可用的有 system: / user: / assistant: / user_send: (unknown role)",
        "第 9 行：未知的角色 sytem:，可用的有 system: / user: / assistant: / user_send: (unknown role)",
    ]
    # a paragraph without a role continues the turn before it (as the bot reads it); only the first needs one
    assert check_preset("system: 设定\n\n设定的第二段\n\nhttps://example.com/x") == []
    assert problems_of("\n\n没有角色的开头\n\nsystem: x") == [
        "第 3 行：第一段没有角色：请以 system: / user: / assistant: / user_send: 开头 (the first paragraph has no role)"
    ]


def test_empty_presets_and_empty_roles_are_refused() -> None:
    for text in ("", "  \n\n \n", "voice: zh-CN-XiaoxiaoNeural", "<|im_end|>"):
        [problem] = check_preset(text)
        assert problem.line == 0 and "预设是空的" in problem.message, text
    assert problems_of("system: 有\n\nassistant:\n\nuser:   <|im_end|>") == [
        "第 3 行：assistant: 后面没有内容 (empty assistant)",
        "第 5 行：user: 后面没有内容 (empty user)",
    ]
    assert problems_of("system:\n换行后的内容") == []  # the text may start on the next line


def test_size_and_binary_are_refused() -> None:
    assert problems_of("system: " + "猫" * (MAX_PRESET_BYTES // 3)) == [
        f"预设太大：{len(('system: ' + '猫' * (MAX_PRESET_BYTES // 3)).encode())} 字节，最多 65536 字节 (too large)"
    ]
    assert problems_of("system: " + "a" * (MAX_PRESET_BYTES - 8)) == []
    assert "NUL" in problems_of("system: a\x00b")[0]


def test_preset_names() -> None:
    for good in ("catgirl", "猫娘_v2-1", "ねこ", "고양이", "A" * 64):
        assert check_preset_name(good) == "", good
    for bad, reason in (
        ("", "请填写"),
        ("A" * 65, "太长"),
        ("../evil", "路径"),
        ("..", "路径"),
        ("a/b", "路径"),
        ("a\\b", "路径"),
        ("a.b", "只能用"),
        ("a b", "只能用"),
        ("猫。", "只能用"),
        ("a\x00", "只能用"),
        ("C:x", "只能用"),
    ):
        assert reason in check_preset_name(bad), bad


def test_create_update_and_delete_rescan_at_once(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 默认")
    presets = book(tmp_path / "", keywords={"猫": "catgirl"})
    created = presets.create("catgirl", "system: 你是猫。\r\n\r\nuser_send: 喵 {prompt}")
    assert created.turns == (ChatTurn("system", "你是猫。"),) and presets.get("猫") is created
    assert (tmp_path / "catgirl.txt").read_bytes() == "system: 你是猫。\n\nuser_send: 喵 {prompt}\n".encode()
    assert presets.aliases_of("catgirl") == ["猫"] and presets.editable(created)
    updated = presets.update("猫", "system: 你是老虎。")
    assert updated.name == "catgirl" and presets.turns("catgirl") == (ChatTurn("system", "你是老虎。"),)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catgirl.txt", "default.txt"]  # no temporary file left
    presets.delete("catgirl")
    assert presets.get("catgirl") is None and not (tmp_path / "catgirl.txt").exists()
    assert [p.name for p in presets.presets()] == ["default"]


def test_create_makes_the_folder_and_refuses_taken_names(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "presets"
    presets = book(folder)
    presets.create("default", "system: 新的默认")
    assert presets.is_default(presets.default_preset()) and presets.turns() == (ChatTurn("system", "新的默认"),)
    for name in ("default", "../x"):
        with pytest.raises(PresetError):
            presets.create(name, "system: x")
    (folder / "broken.txt").write_bytes(b"\xff\xff\xff")  # unreadable: not listed, still taken
    presets.reload()
    assert presets.get("broken") is None
    with pytest.raises(PresetError, match=r"已经有 broken\.txt"):
        presets.create("broken", "system: x")
    with pytest.raises(PresetError) as caught:
        presets.create("ok", "system: x\n\nbot: y")
    assert "第 3 行" in str(caught.value) and [p.line for p in caught.value.problems] == [3]
    assert not (folder / "ok.txt").exists()


def test_the_default_preset_cannot_be_deleted(tmp_path: Path) -> None:
    write(tmp_path, "default.txt", "system: 默认")
    write(tmp_path, "猫娘.txt", "system: 喵")
    presets = book(tmp_path, default="main", keywords={"main": "猫娘"})
    with pytest.raises(PresetError, match="默认预设"):
        presets.delete("猫娘")
    with pytest.raises(PresetError, match="默认预设"):
        presets.delete("main")
    presets.delete("default")
    assert (tmp_path / "猫娘.txt").exists() and not (tmp_path / "default.txt").exists()


def test_links_out_of_the_folder_are_never_written(tmp_path: Path) -> None:
    folder, outside = tmp_path / "presets", tmp_path / "outside"
    write(outside, "secret.txt", "system: 外面的文件")
    write(folder, "default.txt", "system: 默认")
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    presets = book(folder, keywords={"远处": str(outside / "secret.txt")})
    assert presets.get("link") is not None and not presets.editable(presets.get("link"))  # type: ignore[arg-type]
    for name in ("link", "远处"):
        with pytest.raises(PresetError, match="只能查看"):
            presets.update(name, "system: 改了")
        with pytest.raises(PresetError, match="只能查看"):
            presets.delete(name)
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "system: 外面的文件"
    assert (folder / "link.txt").is_symlink()


def test_a_link_inside_the_folder_is_written_through_and_deleted_itself(tmp_path: Path) -> None:
    write(tmp_path, "real.txt", "system: 真")
    (tmp_path / "alias.txt").symlink_to(tmp_path / "real.txt")
    presets = book(tmp_path)
    presets.update("alias", "system: 改")
    assert (tmp_path / "alias.txt").is_symlink() and (tmp_path / "real.txt").read_text(
        encoding="utf-8"
    ) == "system: 改\n"
    presets.delete("alias")
    assert not os.path.lexists(tmp_path / "alias.txt") and (tmp_path / "real.txt").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "default.txt", "system: 旧")
    presets = book(tmp_path)

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(presets_module.os, "replace", refuse)
    with pytest.raises(PresetError, match=r"无法写入预设文件.*No space left"):
        presets.update("default", "system: 新")
    assert [p.name for p in tmp_path.iterdir()] == ["default.txt"]
    assert presets.turns() == (ChatTurn("system", "旧"),)


# --- settings -----------------------------------------------------------------------------------


def test_v2_presets_table_is_understood() -> None:
    doc = {
        "openai": {"accounts": [{"api_key": "sk-1"}]},
        "presets": {
            "command": r"加载预设 (\w+)",
            "loaded_successful": "好了",
            "hide": True,
            "keywords": {"猫娘": "presets/catgirl.txt"},
        },
    }
    settings = validate(doc)
    assert settings.warnings == []
    assert settings.presets.keywords == {"猫娘": "presets/catgirl.txt"}
    assert settings.presets.hide and settings.presets.loaded_successful == "好了"
    assert settings.presets.default == "default" and settings.presets.scan_dir == "./presets"


def test_bad_command_pattern_is_refused() -> None:
    with pytest.raises(ValidationError, match="正则表达式无效"):
        PresetSettings(command="加载预设 (")
