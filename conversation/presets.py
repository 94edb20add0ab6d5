"""Preset prompts in chatgpt-mirai-qq-bot v2's file format: the turns a chat starts with and a user-message template."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from loguru import logger

from core.config import PresetSettings
from core.errors import BotError
from core.files import replace_atomically
from core.tokens import estimate_tokens
from llm.base import ChatTurn

# `user_send` is listed before `user` only for readability: the colon after the word already keeps them apart.
_ROLE = re.compile(r"^(system|user_send|user|assistant|voice)[ \t]*[:：][ \t]*", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_PLACEHOLDER = re.compile(r"\{(prompt|nickname|date|time|last_resp)\}")
_DATE_PLACEHOLDER = re.compile(r"\{(date|time)\}")
# Any fixed moment will do for the estimate: the formatted date and time always have the same length.
_SAMPLE_TIME = datetime(2000, 1, 1)

MAX_PRESET_BYTES = 64 * 1024  # a preset file written by the console is at most this big (UTF-8)
MAX_NAME_CHARS = 64
ROLE_WORDS = "system: / user: / assistant: / user_send:"
# Letters, digits, _ and -, and CJK (ideographs, kana, hangul): no dots, separators or spaces.
_NAME = re.compile(r"[A-Za-z0-9_\-\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
# A paragraph that starts the way a role does, such as `bot:` or `sytem：`; not `https://`.
_ROLE_LIKE = re.compile(r"^([A-Za-z_]{1,20})[ \t]*[:：](?!//)")


def _format_date(now: datetime) -> str:
    return now.strftime("%Y年%m月%d日")


def _format_time(now: datetime) -> str:
    return now.strftime("%H:%M")


def _fill_dates(text: str, now: datetime) -> str:
    values = {"date": _format_date(now), "time": _format_time(now)}
    return _DATE_PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclass(frozen=True)
class Preset:
    """One preset: the turns every conversation using it starts with, and the template for user messages."""

    name: str
    turns: tuple[ChatTurn, ...]
    user_send: str = ""
    path: str = ""
    # Counted once here: every request subtracts its preset from the history budget.
    tokens: int = field(init=False, compare=False)
    _dated: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen: the derived fields can only be set through object.__setattr__.
        object.__setattr__(self, "_dated", any(_DATE_PLACEHOLDER.search(t.content) for t in self.turns))
        estimate = sum(estimate_tokens(_fill_dates(t.content, _SAMPLE_TIME)) for t in self.turns)
        object.__setattr__(self, "tokens", estimate)

    def dated_turns(self, now: datetime | None = None) -> tuple[ChatTurn, ...]:
        """The turns with `{date}` / `{time}` filled in (v2 filled `{date}` in system prompts too)."""
        if not self._dated:
            return self.turns
        now = now or datetime.now()
        return tuple(ChatTurn(t.role, _fill_dates(t.content, now), t.images) for t in self.turns)

    def format_prompt(self, prompt: str, nickname: str, now: datetime | None = None, *, last_reply: str = "") -> str:
        """The user's message put through the `user_send:` template; unchanged when there is none.

        Placeholders: {prompt} {nickname} {date} {time} and v2's {last_resp}. Any other braces stay
        as written, and text substituted in is never scanned again (a user typing "{date}" keeps it).
        """
        if not self.user_send:
            return prompt
        now = now or datetime.now()
        template = self.user_send
        if "{prompt}" not in template:
            # A template without {prompt} would swallow what the user said; keep it after the template.
            template = f"{template}\n{{prompt}}"
        values = {
            "prompt": prompt,
            "nickname": nickname,
            "date": _format_date(now),
            "time": _format_time(now),
            "last_resp": last_reply,
        }
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_preset(text: str, name: str = "", path: str = "") -> Preset:
    """Parse a v2 preset: blocks separated by blank lines, each starting `system:` / `user:` / `assistant:`.

    Role words are case-insensitive and may use a full-width colon. A `user_send:` block is the
    template for user messages; `voice:` (v2's text-to-speech voice) is ignored. A block without a
    role word continues the previous block; a file without any role word is one system prompt.
    Never raises: anything unrecognised is text.
    """
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("<|im_end|>", "")
    blocks: list[list[str]] = []  # [role, text]; merged continuations, empty ones dropped at the end
    for raw in _BLANK_LINE.split(text.strip()):
        block = raw.strip()
        if not block:
            continue
        match = _ROLE.match(block)
        if match:
            role = match.group(1).lower()
            if role == "voice":
                continue
            blocks.append([role, block[match.end() :].strip()])
        elif blocks:
            previous = blocks[-1]
            previous[1] = f"{previous[1]}\n\n{block}" if previous[1] else block
        else:
            blocks.append(["system", block])
    user_send = ""
    turns: list[ChatTurn] = []
    for role, content in blocks:
        if role == "user_send":
            user_send = content  # as in v2, the last template wins
        elif content:
            turns.append(ChatTurn(role, content))  # type: ignore[arg-type]
    return Preset(name, tuple(turns), user_send, path)


# --- checking a preset before it is written ----------------------------------------------------------


@dataclass(frozen=True)
class PresetProblem:
    """Why a preset text is refused; `line` is 1-based (0: the text as a whole)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"第 {self.line} 行：{self.message}" if self.line else self.message


class PresetError(BotError):
    """A preset change was refused; str() is one line for the user, `problems` the faults of the text."""

    def __init__(self, message: str, problems: Sequence[PresetProblem] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message)


def check_preset_name(name: str) -> str:
    """Why `name` cannot be a new preset's name, in one line; "" when it can."""
    if not name:
        return "请填写预设名称 (name required)"
    if len(name) > MAX_NAME_CHARS:
        return f"预设名称太长：最多 {MAX_NAME_CHARS} 个字符 (name too long)"
    if ".." in name or "/" in name or "\\" in name:
        return "预设名称不能包含路径（/、\\ 或 ..）(no paths in a name)"
    if _NAME.fullmatch(name) is None:
        return "预设名称只能用字母、数字、汉字、_ 和 - (letters, digits, CJK, _ and - only)"
    return ""


def check_preset(text: str) -> list[PresetProblem]:
    """Everything wrong with `text` as a preset written by hand; empty when it may be saved.

    Stricter than `parse_preset`, which accepts anything: the first paragraph must start with a role
    word (a later one without a role continues the turn before it, as `parse_preset` reads it, so a
    system prompt may hold blank lines), an unknown role word is refused, a role word must be
    followed by text, and the preset must not be empty or over MAX_PRESET_BYTES.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PRESET_BYTES:
        return [PresetProblem(0, f"预设太大：{size} 字节，最多 {MAX_PRESET_BYTES} 字节 (too large)")]
    if "\x00" in text:
        return [PresetProblem(0, "预设含有 NUL 字符，不是文本 (not text)")]
    problems = [
        problem
        for index, (line, paragraph) in enumerate(_paragraphs(text))
        if (problem := _paragraph_problem(line, paragraph, first=index == 0))
    ]
    if not problems:
        preset = parse_preset(text)
        if not preset.turns and not preset.user_send:
            problems.append(PresetProblem(0, f"预设是空的：至少写一段 {ROLE_WORDS} (empty preset)"))
    return problems


def _paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each paragraph, split at blank lines as `parse_preset` splits them."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("<|im_end|>", "")
    lines = text.split("\n")
    found: list[tuple[int, str]] = []
    start, block = 0, list[str]()
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip(" \t"):
            if not block:
                start = number
            block.append(line)
            continue
        paragraph = "\n".join(block).strip()
        if paragraph:
            # A paragraph's leading lines of other white space (a full-width space) are not where it starts.
            start += next(i for i, part in enumerate(block) if part.strip())
            found.append((start, paragraph))
        block = []
    return found


def _paragraph_problem(line: int, paragraph: str, first: bool) -> PresetProblem | None:
    match = _ROLE.match(paragraph)
    if match is None:
        like = _ROLE_LIKE.match(paragraph)
        if like is not None:
            return PresetProblem(line, f"未知的角色 {like.group(1)}:，可用的有 {ROLE_WORDS} (unknown role)")
        if not first:
            return None  # continues the turn before it
        return PresetProblem(line, f"第一段没有角色：请以 {ROLE_WORDS} 开头 (the first paragraph has no role)")
    role = match.group(1).lower()
    if role != "voice" and not paragraph[match.end() :].strip():
        return PresetProblem(line, f"{role}: 后面没有内容 (empty {role})")
    return None


class PresetBook:
    """The presets in `scan_dir` (recursively) and in `keywords`; names are file names without `.txt`."""

    def __init__(self, settings: PresetSettings | str | Path) -> None:
        # A bare folder is accepted so callers written for the old constructor keep working.
        if not isinstance(settings, PresetSettings):
            settings = PresetSettings(scan_dir=str(settings))
        self.settings = settings
        self._presets: dict[str, Preset] = {}
        self._aliases: dict[str, str] = {}
        self._default = Preset("default", ())
        self.reload()

    def reload(self, settings: PresetSettings | None = None) -> None:
        """Scan the files again (optionally with new settings); a file that fails keeps the bot running."""
        if settings is not None:
            self.settings = settings
        presets, aliases = _load(self.settings)
        default_name = aliases.get(self.settings.default, self.settings.default)
        default = presets.get(default_name)
        if default is None:
            if self.settings.default != "default":
                logger.warning("默认预设 {} 不存在 (default preset not found); 不使用预设", self.settings.default)
            default = Preset("default", ())
        # Swapped in together so a lookup never sees half of an old and half of a new scan.
        self._presets, self._aliases, self._default = presets, aliases, default
        shown = ", ".join(self.names()) or "无 (none)"
        logger.info("预设 presets: {} (default: {})", shown, default.name)

    def get(self, name: str) -> Preset | None:
        """The preset called `name` or aliased as `name`; None when there is none."""
        return self._presets.get(self._aliases.get(name, name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def default_preset(self) -> Preset:
        """The preset new conversations start with: `settings.default`, else an empty one named "default"."""
        return self._default

    def preset(self, name: str = "") -> Preset:
        """Preset `name`, or the default preset for "" and for names that do not exist (any more)."""
        return (self.get(name) if name else None) or self._default

    def names(self) -> list[str]:
        """Sorted names for users to pick from; aliases read "alias → target"."""
        return sorted([*self._presets, *(f"{alias} → {target}" for alias, target in self._aliases.items())])

    def turns(self, name: str = "") -> tuple[ChatTurn, ...]:
        """The turns of preset `name` (or the default preset), dates filled in."""
        return self.preset(name).dated_turns()

    def tokens(self, name: str = "") -> int:
        """Estimated tokens of preset `name` (or the default preset)."""
        return self.preset(name).tokens

    # --- the console's view and changes ------------------------------------------------------------

    def presets(self) -> list[Preset]:
        """Every loaded preset (aliases not repeated), sorted by name."""
        return [self._presets[name] for name in sorted(self._presets)]

    def aliases_of(self, name: str) -> list[str]:
        """The `keywords` aliases that lead to preset `name`, sorted."""
        return sorted(alias for alias, target in self._aliases.items() if target == name)

    def is_default(self, preset: Preset) -> bool:
        """Whether `preset` is the one new conversations start with (`[presets] default`)."""
        return preset.name == self._default.name and bool(preset.path) and preset.path == self._default.path

    def folder(self) -> Path:
        return Path(self.settings.scan_dir)

    def editable(self, preset: Preset) -> bool:
        """Whether `preset`'s file is in `scan_dir` (after following links), so the console may change it."""
        return bool(preset.path) and _inside(self.folder(), Path(preset.path)) is not None

    def text_of(self, preset: Preset) -> str:
        """The file's text as written; raises PresetError when it cannot be read any more."""
        try:
            return _read_text(Path(preset.path))
        except OSError as exc:
            raise PresetError(f"预设文件无法读取 (cannot read): {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise PresetError("预设文件编码无法识别，请另存为 UTF-8 (not UTF-8 or GBK)") from exc

    def create(self, name: str, text: str) -> Preset:
        """Write `<scan_dir>/<name>.txt` and load it; raises PresetError (a bad name or text, a taken name)."""
        problem = check_preset_name(name)
        if problem:
            raise PresetError(problem)
        if self.get(name) is not None:
            raise PresetError(f"已经有叫 {name} 的预设了 (name taken)")
        _refuse_bad_text(text)
        folder = self.folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PresetError(f"无法创建预设目录 (cannot create scan_dir): {exc.strerror or exc}") from exc
        path = folder / f"{name}.txt"
        target = _inside(folder, path)
        if target is None:
            raise PresetError("预设文件会写到预设目录之外，已拒绝 (outside scan_dir)")
        if os.path.lexists(path):
            raise PresetError(f"预设目录里已经有 {name}.txt（可能无法读取）(file exists)")
        _write_atomically(target, text)
        logger.info("preset {} created in {}", name, path)
        return self._reloaded(name)

    def update(self, name: str, text: str) -> Preset:
        """Replace the text of preset `name` (its file in `scan_dir`) and load it again; raises PresetError."""
        preset = self._changeable(name)
        _refuse_bad_text(text)
        target = _inside(self.folder(), Path(preset.path))
        if target is None:  # the file was swapped for a link out of scan_dir since it was loaded
            raise PresetError(_OUTSIDE)
        _write_atomically(target, text)
        logger.info("preset {} saved to {}", preset.name, target)
        return self._reloaded(preset.name)

    def delete(self, name: str) -> None:
        """Remove preset `name`'s file (a link itself, never what it points at); raises PresetError."""
        preset = self._changeable(name)
        if self.is_default(preset) or name == self.settings.default:
            raise PresetError(f"{preset.name} 是默认预设（[presets] default），不能删除 (the default preset)")
        path = Path(preset.path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # already gone: the rescan below shows that
        except OSError as exc:
            raise PresetError(f"无法删除预设文件 (cannot delete): {exc.strerror or exc}") from exc
        logger.info("preset {} deleted: {}", preset.name, path)
        self.reload()

    def _changeable(self, name: str) -> Preset:
        preset = self.get(name)
        if preset is None:
            raise PresetError(f"没有找到预设 {name} (no such preset)")
        if not self.editable(preset):
            raise PresetError(_OUTSIDE)
        return preset

    def _reloaded(self, name: str) -> Preset:
        self.reload()
        preset = self.get(name)
        if preset is None:  # e.g. hidden by a keyword of the same name
            raise PresetError(
                f"预设 {name} 已保存，但重新扫描后没有出现，请检查 [presets] keywords (saved but not loaded)"
            )
        return preset


def _load(settings: PresetSettings) -> tuple[dict[str, Preset], dict[str, str]]:
    """Presets by name and aliases (alias → preset name), with every problem logged as one warning."""
    scan_dir = Path(settings.scan_dir)
    presets: dict[str, Preset] = {}
    by_path: dict[Path, str] = {}
    if scan_dir.is_dir():
        # Shallow files first so `presets/a.txt` beats `presets/old/a.txt`, as a user would expect.
        files = [p for p in scan_dir.rglob("*") if p.suffix.lower() == ".txt" and p.is_file()]
        for path in sorted(files, key=lambda p: (len(p.parts), str(p))):
            if path.stem in presets:
                logger.warning("预设 {} 重名，已忽略 (duplicate preset name ignored): {}", path.stem, path)
                continue
            preset = _load_file(path, path.stem)
            if preset is not None:
                presets[path.stem] = preset
                by_path[path.resolve()] = path.stem
    elif not settings.keywords:
        logger.warning("预设目录 {} 不存在 (preset folder not found); 不使用预设", scan_dir)

    wanted: dict[str, str] = {}  # alias → preset name or another alias, as configured
    for alias, target in settings.keywords.items():
        found = _find_file(target, scan_dir)
        if found is None:
            if alias != target:
                wanted[alias] = target
            continue
        known = by_path.get(found.resolve())
        if known is not None:
            if known != alias:
                wanted[alias] = known
            continue
        preset = _load_file(found, alias)
        if preset is not None:
            # As in v2, a keyword wins over a scanned file of the same name.
            by_path = {p: n for p, n in by_path.items() if n != alias}
            presets[alias] = preset
            by_path[found.resolve()] = alias

    aliases: dict[str, str] = {}
    for alias in wanted:
        # Aliases of aliases are followed to the preset; `seen` stops a loop such as a → b → a.
        target, seen = alias, set[str]()
        while target in wanted and target not in seen:
            seen.add(target)
            target = wanted[target]
        if target in wanted or target not in presets:
            logger.warning("预设别名 {} → {}：找不到这个文件或预设 (no such file or preset)", alias, wanted[alias])
            continue
        aliases[alias] = target
    for alias, target in aliases.items():
        if alias in presets:
            # The configured alias wins; listing the file too would show two presets of one name.
            logger.info("预设 {} 被别名 {} → {} 覆盖 (preset hidden by alias)", presets[alias].path, alias, target)
            del presets[alias]
    return presets, aliases


_OUTSIDE = "这个预设的文件不在预设目录（[presets] scan_dir）里，只能查看 (outside scan_dir: read-only)"


def _refuse_bad_text(text: str) -> None:
    problems = check_preset(text)
    if problems:
        raise PresetError(f"预设有 {len(problems)} 处错误，未保存 (not saved)：{problems[0]}", problems)


def _inside(folder: Path, path: Path) -> Path | None:
    """`path` with every link followed, when the folder it ends up in is `folder` or below; else None."""
    try:
        resolved = path.resolve()
        return resolved if resolved.parent.is_relative_to(folder.resolve()) else None
    except (OSError, RuntimeError, ValueError):  # a link loop, a name this system cannot hold
        return None


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` as UTF-8 so readers see the old preset or the new one, never half."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").encode("utf-8") + b"\n"
    try:
        replace_atomically(path, data)
    except OSError as exc:
        raise PresetError(f"无法写入预设文件 (cannot write): {exc.strerror or exc}") from exc


def _find_file(target: str, scan_dir: Path) -> Path | None:
    """The file a keyword points at: a path as written (v2), or one relative to `scan_dir`."""
    candidates = [Path(target), scan_dir / target]
    if not target.lower().endswith(".txt"):
        candidates.append(scan_dir / f"{target}.txt")
    try:
        return next((p for p in candidates if p.is_file()), None)
    except OSError:  # a name that is not a valid path on this system
        return None


def _load_file(path: Path, name: str) -> Preset | None:
    """Parse one preset file; None (after one warning naming the file and the reason) when it cannot be read."""
    try:
        text = _read_text(path)
    except OSError as exc:
        logger.warning("预设文件 {} 无法读取，已跳过 (preset skipped): {}", path, exc.strerror or exc)
        return None
    except UnicodeDecodeError:
        logger.warning("预设文件 {} 编码无法识别，已跳过，请另存为 UTF-8 (preset skipped: not UTF-8 or GBK)", path)
        return None
    return parse_preset(text, name, str(path))


def _read_text(path: Path) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, or GBK; raises UnicodeDecodeError for anything else."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")  # Windows Notepad's "Unicode"
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Presets edited in Windows Notepad are often saved as GBK; strict, so garbage is reported.
        return data.decode("gbk")
