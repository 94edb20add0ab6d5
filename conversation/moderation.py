"""A local blocked-word list, checked on what users send and on what the model answers."""

from __future__ import annotations

import re

from core.config import ModerationSettings


class WordFilter:
    """Case-insensitive matching of `[moderation] words` and the lines of `words_file`."""

    def __init__(self, settings: ModerationSettings) -> None:
        # words_file was read and checked when the config was loaded (a bad file is a config error)
        words = [w.strip() for w in settings.blocked_words() if w.strip()]
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
