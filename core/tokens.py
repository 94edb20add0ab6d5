"""Fast token estimate for history budgeting, without a tokenizer library, calibrated per model from usage."""

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


# Before a model has reported usage, estimates are scaled by this: small local models' tokenizers
# spend 1.3-2 tokens per CJK character where the estimate counts one (2,065 real tokens were
# measured against a 1,200 estimate), so the first request errs on the short side.
DEFAULT_RATIO = 1.5
RATIO_MIN, RATIO_MAX = 0.5, 4.0
# An undercount overruns the context, an overcount only shortens the history: follow a larger
# ratio quickly and a smaller one slowly.
_RISE, _FALL = 0.5, 0.2


class Calibration:
    """Per model, how many real tokens (the server's `usage.prompt_tokens`) one estimated token is.

    A moving average of real/estimated, clamped to RATIO_MIN..RATIO_MAX; a model's first report
    replaces DEFAULT_RATIO outright.
    """

    def __init__(self) -> None:
        self._ratios: dict[str, float] = {}

    def ratio(self, model: str) -> float:
        """The factor for `model`; an unknown model gets the largest known one (or DEFAULT_RATIO)."""
        known = self._ratios.get(model)
        if known is not None:
            return known
        return max(self._ratios.values(), default=DEFAULT_RATIO)

    def observe(self, model: str, estimated: int, real: int) -> float:
        """Fold one request's estimated and reported prompt tokens into `model`'s ratio; the new ratio."""
        if estimated <= 0 or real <= 0:
            return self.ratio(model)
        seen = min(RATIO_MAX, max(RATIO_MIN, real / estimated))
        old = self._ratios.get(model)
        new = seen if old is None else old + (_RISE if seen > old else _FALL) * (seen - old)
        self._ratios[model] = new
        return new
