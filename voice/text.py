"""What of an answer is read aloud: a sentence-bounded head of it, without markup, code or URLs."""

from __future__ import annotations

import re

SENTENCE_ENDS = "。！？.!?\n"
CODE_SPOKEN = "（代码略）"
LINK_SPOKEN = "（链接）"

# ``` or ~~~ fences; an unclosed fence runs to the end (an answer cut short mid-code)
_FENCED_CODE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*(?:\s+\"[^\"\n]*\")?\)")
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>()（）\"'，。！？]+|\bwww\.[^\s<>()（）\"'，。！？]+", re.IGNORECASE)
_LINE_MARKERS = re.compile(r"^[ \t]*(?:(?:>[ \t]?)+|#{1,6}[ \t]+|[-*+][ \t]+)", re.MULTILINE)
_HEADING_TAIL = re.compile(r"[ \t]+#+[ \t]*$", re.MULTILINE)
_INLINE_MARKERS = re.compile(r"\*+|`+|~~|(?<![0-9A-Za-z])_+|_+(?![0-9A-Za-z])")
_HORIZONTAL_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0e\ufe0f\u200d\u20e3\U000e0020-\U000e007f]",
)
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


def split_spoken(text: str, cap: int) -> tuple[str, str]:
    """(`spoken`, `rest`): `spoken` ends at the last sentence end within `cap` characters (a hard cut
    at `cap` when there is none); `rest` is the remainder of the original text. Both stripped."""
    if cap <= 0:
        return "", text.strip()
    if len(text) <= cap:
        return text.strip(), ""
    head = text[:cap]
    cut = max(head.rfind(mark) for mark in SENTENCE_ENDS) + 1
    if cut <= 0 or not head[:cut].strip():
        cut = cap
    return text[:cut].strip(), text[cut:].strip()


def speakable(text: str) -> str:
    """`text` as it should be read aloud: code blocks as "（代码略）", links as their text, bare URLs as
    "（链接）", without markdown markers and emoji; the words otherwise unchanged."""
    text = _FENCED_CODE.sub(CODE_SPOKEN, text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _BARE_URL.sub(LINK_SPOKEN, text)
    text = _HORIZONTAL_RULE.sub("", text)
    text = _HEADING_TAIL.sub("", text)
    text = _LINE_MARKERS.sub("", text)
    text = _INLINE_MARKERS.sub("", text)
    text = _EMOJI.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_LINES.sub("\n", text)
    return text.strip()
