"""Preset prompts in chatgpt-mirai-qq-bot v2's file format: the turns a chat starts with and a user-message template."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from loguru import logger

from core.config import PresetSettings
from core.tokens import estimate_tokens
from llm.base import ChatTurn

# `user_send` is listed before `user` only for readability: the colon after the word already keeps them apart.
_ROLE = re.compile(r"^(system|user_send|user|assistant|voice)[ \t]*[:：][ \t]*", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_PLACEHOLDER = re.compile(r"\{(prompt|nickname|date|time|last_resp)\}")
_DATE_PLACEHOLDER = re.compile(r"\{(date|time)\}")
# Any fixed moment will do for the estimate: the formatted date and time always have the same length.
_SAMPLE_TIME = datetime(2000, 1, 1)


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
