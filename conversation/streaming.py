"""Cut a streamed model reply into parts that can be sent before the reply is complete."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Reasoning models (DeepSeek-R1 and its relatives) wrap their chain of thought in these tags.
_TAG = re.compile(r"<(/?)think(?:ing)?>", re.IGNORECASE)
_TAGS = ("<think>", "<thinking>", "</think>", "</thinking>")
_LONGEST_TAG = max(map(len, _TAGS))
# CommonMark fence: up to 3 spaces, then at least three backticks or tildes, then an optional info string.
_FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def strip_reasoning(text: str) -> str:
    """Remove `<think>…</think>` / `<thinking>…</thinking>` blocks and the whitespace they leave in front.

    An unclosed opening tag hides everything after it, and a closing tag that comes before any opening
    tag (servers that put the opening tag in the prompt) hides everything before it.
    """
    if _TAG.search(text) is None:
        return text
    reasoning = _ReasoningFilter()
    pieces: list[str] = []
    for piece in [*reasoning.feed(text), reasoning.flush()]:
        if piece is None:
            pieces.clear()
        else:
            pieces.append(piece)
    return "".join(pieces).lstrip()


class ParagraphStream:
    """Fed text deltas, hands back parts that are complete and safe to send as separate messages.

    A part ends at a blank line outside any fenced code block, once the paragraphs it groups reach
    `min_chars`; only text longer than `limit` is cut elsewhere (a line break, else a hard cut), and a
    code block cut in two is closed at the end of one part and re-opened at the start of the next.
    """

    def __init__(self, limit: int, min_chars: int = 200, strip_think: bool = True) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._min_chars = min_chars
        self._reasoning = _ReasoningFilter() if strip_think else None
        self._splitter = _Splitter(limit, min_chars)
        self._visible: list[str] = []
        self._finished = False

    @property
    def text(self) -> str:
        """Everything fed so far without reasoning: the reply to store.

        Equal to `strip_reasoning` of the fed text, except when a bare closing tag arrives after parts
        were already sent: those parts stay in, because the user has seen them.
        """
        text = "".join(self._visible)
        if self._reasoning is None:
            return text
        text += self._reasoning.held_text()
        return text.lstrip() if self._reasoning.found else text

    def feed(self, delta: str) -> list[str]:
        """Buffer `delta`; return the parts (possibly none) that are ready to send now."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self._reasoning is None:
            return self._push(delta)
        parts: list[str] = []
        for piece in self._reasoning.feed(delta):
            if piece is not None:
                parts += self._push(piece)
            elif not self._splitter.released:
                # A bare closing tag: what came before was reasoning, and none of it has been sent yet.
                self._visible.clear()
                self._splitter = _Splitter(self._limit, self._min_chars)
        return parts

    def finish(self) -> list[str]:
        """The stream has ended: return the remaining parts."""
        if self._finished:
            return []
        self._finished = True
        parts = self._push(self._reasoning.flush()) if self._reasoning is not None else []
        return parts + self._splitter.finish()

    def _push(self, text: str) -> list[str]:
        if not text:
            return []
        self._visible.append(text)
        return self._splitter.push(text)


class _ReasoningFilter:
    """Incremental tag scanner: passes text outside reasoning blocks through, drops the rest."""

    def __init__(self) -> None:
        self.found = False  # any tag seen, so leading whitespace left behind should go
        self._inside = False
        self._held = ""  # the end of the input that may still become a tag ("<th"), never longer than a tag

    def feed(self, delta: str) -> list[str | None]:
        """Visible pieces of `delta` in order; None means "everything before this was reasoning"."""
        text = self._held + delta
        self._held = ""
        out: list[str | None] = []
        start = 0
        for match in _TAG.finditer(text):
            if not self._inside and match.start() > start:
                out.append(text[start : match.start()])
            start = match.end()
            if not match.group(1):
                self._inside = True
            elif self._inside:
                self._inside = False
            elif not self.found:
                out.append(None)
            # A stray closing tag after an earlier block is simply dropped.
            self.found = True
        tail = text[start:]
        # Only the last "<" can begin a tag: a tag has no other "<" in it.
        lt = tail.rfind("<", max(0, len(tail) - _LONGEST_TAG + 1))
        if lt >= 0 and any(tag.startswith(tail[lt:].lower()) for tag in _TAGS):
            self._held = tail[lt:]
            tail = tail[:lt]
        if tail and not self._inside:
            out.append(tail)
        return out

    def held_text(self) -> str:
        """What is held back, read as plain text (as it will be if the input ends here)."""
        return "" if self._inside else self._held

    def flush(self) -> str:
        """The input has ended: a half tag was just text after all."""
        held = self.held_text()
        self._held = ""
        return held


@dataclass(frozen=True, slots=True)
class _Fence:
    """An open fenced code block."""

    marker: str  # the backtick or tilde run that opened it; it also closes it
    opener: str  # marker plus info string ("```python"), to re-open the block in the next part


def _next_fence(fence: _Fence | None, line: str) -> _Fence | None:
    """The fence open after `line`, given the one open before it."""
    match = _FENCE_LINE.fullmatch(line)
    if match is None:
        return fence
    run, info = match.group(1), match.group(2).strip()
    if fence is None:
        if run[0] == "`" and "`" in info:
            return None  # inline code such as ```x```, not a fence
        return _Fence(run, run + info)
    if run[0] == fence.marker[0] and len(run) >= len(fence.marker) and not info:
        return None
    return fence


class _Splitter:
    """The paragraph state machine over visible text, line by line.

    The buffer always starts outside a code block and never holds more than `limit` characters between
    calls: the moment it would hold `limit + 1`, a part is cut off. Deciding at that exact character
    makes the parts independent of how the text was split into deltas.
    """

    def __init__(self, limit: int, min_chars: int) -> None:
        self._limit = limit
        self._min_chars = min_chars
        self._lines: list[str] = []  # complete lines, without their newline
        self._fences: list[_Fence | None] = []  # the fence open after each complete line
        self._partial: list[str] = []  # pieces of the line still being written
        self._size = 0  # buffered characters: complete lines with their newlines, plus the partial line
        self._fence: _Fence | None = None
        self._reopened = False  # the buffer starts with a fence re-opened by a cut, and no code after it yet
        self.released = False

    def push(self, text: str) -> list[str]:
        """Buffer `text`; return the parts it completes."""
        out: list[str] = []
        # (text, position, position of its next newline): a cut puts its leftover in front of the rest.
        work: list[tuple[str, int, int]] = [(text, 0, -1)]
        while work:
            chunk, i, newline = work.pop()
            while i < len(chunk):
                if newline < i:
                    newline = chunk.find("\n", i)
                    if newline < 0:
                        newline = len(chunk)
                take = min(newline - i, self._limit + 1 - self._size)
                if take:
                    self._partial.append(chunk[i : i + take])
                    self._size += take
                    i += take
                # A newline that would overflow waits until after the cut, as it would arriving on its own.
                if i == newline < len(chunk) and self._size <= self._limit:
                    i += 1
                    self._size += 1
                    self._end_line(out)
                if self._size > self._limit:
                    work.append((chunk, i, newline))
                    work.append((self._cut(out), 0, -1))
                    break
        return out

    def finish(self) -> list[str]:
        """Everything left, which always fits in one part."""
        reopened = self._reopened
        text = self._take_all()
        if reopened and not text.partition("\n")[2].strip():
            return []  # a block re-opened by a cut that got no more code: nothing to show
        part = text.strip()
        return [part] if part else []

    def _end_line(self, out: list[str]) -> None:
        line = "".join(self._partial)
        self._partial.clear()
        blank = not line.strip()
        if blank and not self._lines:
            self._size -= len(line) + 1  # blank lines in front of a part would only be stripped off
            return
        self._fence = _next_fence(self._fence, line)
        if self._reopened and self._lines:
            if self._fence is None:
                self._take_all()  # the block ended right where it was cut: a re-opened empty block says nothing
                return
            self._reopened = blank
        self._lines.append(line)
        self._fences.append(self._fence)
        # A blank line outside a code block ends the paragraphs before it; send them once they are long
        # enough. The size check is a cheap upper bound on the stripped length.
        if blank and self._fence is None and self._size - len(line) - 2 >= self._min_chars:
            part = "\n".join(self._lines).strip()
            if len(part) >= self._min_chars:
                self._take_all()
                self._emit(out, part)

    def _cut(self, out: list[str]) -> str:
        """The buffer holds `limit + 1` characters: send the best part that fits, return the leftover."""
        limit = self._limit
        outside = -1  # end of the last line that ends outside a code block
        inside: tuple[int, _Fence] | None = None  # end of the last code line after which the block can be closed
        offset = 0
        previous: _Fence | None = None
        code = False
        for line, fence in zip(self._lines, self._fences, strict=True):
            end = offset + len(line)
            if fence is None:
                outside = end
            else:
                # Cutting after only the opening line and blank lines would send an empty block.
                code = previous is not None and (code or bool(line.strip()))
                if code and end + 1 + len(fence.marker) <= limit:
                    inside = (end, fence)
            previous = fence
            offset = end + 1
        open_fence = self._fence
        opening_line = len(self._lines[0]) if self._lines else 0  # the opening fence, when cut inside
        text = self._take_all()
        reopen: _Fence | None = None
        if outside >= 0:
            part, rest = text[:outside], text[outside + 1 :]
        elif inside is not None:
            cut, reopen = inside
            part, rest = text[:cut], text[cut + 1 :]
        elif open_fence is not None and (cut := limit - 1 - len(open_fence.marker)) > opening_line + 1:
            reopen = open_fence  # a code line longer than the limit: cut it, still inside the block
            part, rest = text[:cut], text[cut:]
        else:
            part, rest = text[:limit], text[limit:]
        if reopen is not None:
            # Close the block at the end of this part and open it again, language and all, in the next one.
            # Only blank lines after the opening line are not worth a message: they are dropped.
            part = f"{part}\n{reopen.marker}" if part[opening_line:].strip() else ""
            rest = f"{reopen.opener}\n{rest}"
            self._reopened = True
        self._emit(out, part.strip())
        return rest

    def _take_all(self) -> str:
        """Empty the buffer and return its text."""
        text = "".join(line + "\n" for line in self._lines) + "".join(self._partial)
        self._lines.clear()
        self._fences.clear()
        self._partial.clear()
        self._size = 0
        self._fence = None
        self._reopened = False
        return text

    def _emit(self, out: list[str], part: str) -> None:
        if part:
            out.append(part)
            self.released = True
