"""A local blocked-word list, checked on what users send and on what the model answers."""

from __future__ import annotations

import re
from pathlib import Path

from loguru import logger

from core.config import ModerationSettings


class WordFilter:
    """Case-insensitive matching of `[moderation] words` and the lines of `words_file`."""

    def __init__(self, settings: ModerationSettings) -> None:
        words = [w.strip() for w in settings.words if w.strip()]
        if settings.words_file:
            words += _read_words(Path(settings.words_file))
        # Longest first, so a word is masked whole even when a shorter word is part of it.
        unique = sorted(set(words), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique)), re.IGNORECASE) if unique else None
        self.count = len(unique)

    def found(self, text: str) -> bool:
        """True when `text` contains a blocked word."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def mask(self, text: str) -> str:
        """`text` with every blocked word replaced by as many `*`."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: "*" * len(m.group(0)), text)


def _read_words(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        logger.bind(adapter="chat").warning("moderation words file {} not read: {}", path, exc.strerror)
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("gbk", errors="replace")  # word lists made in Windows Notepad
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
