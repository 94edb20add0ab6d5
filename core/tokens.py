"""Fast token estimate for history budgeting, without a tokenizer library."""

from __future__ import annotations

import re

# Ideographs, kana, hangul, CJK and full-width punctuation: BPE tokenizers spend about one token
# on each of these, while Latin-script text averages about four characters per token.
_WIDE_RUNS = re.compile(
    "["
    "\u1100-\u11ff"  # hangul jamo
    "\u2e80-\u9fff"  # radicals, CJK symbols and punctuation, kana, bopomofo, ext A, unified ideographs
    "\ua960-\ua97f"  # hangul jamo extended-A
    "\uac00-\ud7ff"  # hangul syllables and jamo extended-B
    "\uf900-\ufaff"  # compatibility ideographs
    "\ufe30-\ufe4f"  # CJK compatibility forms (vertical punctuation)
    "\uff00-\uffef"  # full-width and half-width forms
    "\U00020000-\U0003ffff"  # ideograph extensions B and later
    "]+"
)

MESSAGE_OVERHEAD = 4
"""Tokens a chat API spends on a message's role and separators, whatever its text."""


def estimate_tokens(text: str) -> int:
    """Estimated tokens of one chat message holding `text`; 0 for the empty string."""
    if not text:
        return 0
    if text.isascii():  # O(1) in CPython: the common case skips the regex entirely
        return (len(text) + 3) // 4 + MESSAGE_OVERHEAD
    # Matching runs instead of single characters keeps the regex engine's per-match cost low.
    other = len(_WIDE_RUNS.sub("", text))
    wide = len(text) - other
    return wide + (other + 3) // 4 + MESSAGE_OVERHEAD
