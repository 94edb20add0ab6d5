"""Preset prompts: files in chatgpt-mirai-qq-bot v2's format, turned into the turns a chat starts with."""

from __future__ import annotations

import re
from pathlib import Path

from loguru import logger

from core.tokens import estimate_tokens
from llm.base import ChatTurn

_ROLE = re.compile(r"^(system|user|assistant)\s*[:：]\s*", re.IGNORECASE)


def parse_preset(text: str) -> tuple[ChatTurn, ...]:
    """Blocks separated by blank lines, each starting `system:` / `user:` / `assistant:`.

    A block without a role word continues the previous turn; a file without any role word is
    one system prompt.
    """
    text = text.replace("\r\n", "\n").replace("<|im_end|>", "").strip()
    if not text:
        return ()
    turns: list[ChatTurn] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block:
            continue
        match = _ROLE.match(block)
        if match:
            turns.append(ChatTurn(match.group(1).lower(), block[match.end() :].strip()))  # type: ignore[arg-type]
        elif turns:
            last = turns[-1]
            turns[-1] = ChatTurn(last.role, f"{last.content}\n\n{block}")
        else:
            turns.append(ChatTurn("system", block))
    return tuple(turns)


class PresetBook:
    """The presets found in `scan_dir`; `default` is what every new conversation starts with."""

    def __init__(self, scan_dir: str | Path) -> None:
        self.scan_dir = Path(scan_dir)
        self.presets: dict[str, tuple[ChatTurn, ...]] = {}
        if self.scan_dir.is_dir():
            for path in sorted(self.scan_dir.glob("*.txt")):
                try:
                    self.presets[path.stem] = parse_preset(_read_text(path))
                except OSError as exc:
                    logger.warning("preset {} could not be read: {}", path, exc.strerror)
        else:
            logger.warning("preset folder {} not found; chatting without a system prompt", self.scan_dir)
        self.default: tuple[ChatTurn, ...] = self.presets.get("default", ())
        # Counted once here: every request subtracts its preset from the history budget.
        self._tokens = {name: sum(estimate_tokens(t.content) for t in turns) for name, turns in self.presets.items()}

    def turns(self, name: str = "") -> tuple[ChatTurn, ...]:
        """The turns of preset `name`, or the default preset."""
        return self.presets.get(name, self.default) if name else self.default

    def tokens(self, name: str = "") -> int:
        """Estimated tokens of preset `name` (or the default preset)."""
        return self._tokens.get(name or "default", self._tokens.get("default", 0))


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Presets edited in Windows Notepad are often saved as GBK.
        return data.decode("gbk", errors="replace")
