"""Render a model's Markdown answer to a PNG locally with Pillow, so long answers read well in QQ."""

from __future__ import annotations

import functools
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from loguru import logger
from PIL import Image, ImageDraw, ImageFont

log = logger.bind(adapter="render")

# Directories searched recursively on Linux (and BSDs); module-level so tests can point them at a temp dir.
FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
)
_WINDOWS_FONTS = Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts"
# Exact files on Windows and macOS, where the system fonts live in fixed places; best first.
FONT_FILES: tuple[str, ...] = (
    str(_WINDOWS_FONTS / "msyh.ttc"),
    str(_WINDOWS_FONTS / "msyh.ttf"),
    str(_WINDOWS_FONTS / "simhei.ttf"),
    str(_WINDOWS_FONTS / "simsun.ttc"),
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
)
# File-name fragments of fonts with CJK glyphs, best first; compared without case, spaces, '-' or '_'.
_CJK_NAME_HINTS: tuple[str, ...] = (
    "notosanscjk",
    "sourcehansans",
    "notosanssc",
    "wqymicrohei",
    "wqyzenhei",
    "msyh",
    "pingfang",
    "simhei",
    "notoserifcjk",
    "sourcehanserif",
    "notoserifsc",
    "simsun",
    "droidsansfallback",
)
_FONT_SUFFIXES = (".ttc", ".otc", ".otf", ".ttf")
_OTHER_WEIGHTS = ("bold", "black", "heavy", "medium", "light", "thin", "semibold", "demilight", "extralight")

MAX_HEIGHT = 20000  # a runaway answer must not allocate gigabytes: 1000 x 20000 RGB is 60 MB
_ELLIPSIS = "……"
_MAX_INPUT_CHARS = 200_000  # 20000 px holds ~500 lines of at most ~120 narrow characters

_BACKGROUND = (255, 255, 255)
TEXT_COLOR = (36, 41, 47)
CODE_BACKGROUND = (240, 242, 245)  # tests look for this exact grey
_MUTED_COLOR = (101, 109, 118)
_RULE_COLOR = (208, 215, 222)
_LINK_COLOR = (9, 105, 218)
_INLINE_CODE_COLOR = (207, 34, 46)


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-_]", "", name).lower()


def _rank(path: Path) -> tuple[int, int, str] | None:
    """Sort key for a CJK font candidate (lower is better), or None when the file is not one."""
    if path.suffix.lower() not in _FONT_SUFFIXES:
        return None
    name = _normalise(path.stem)
    for position, hint in enumerate(_CJK_NAME_HINTS):
        if hint in name:
            # Prefer the regular weight: bold or thin body text is tiring to read.
            weight = 0 if "regular" in name else 2 if any(w in name for w in _OTHER_WEIGHTS) else 1
            return position, weight, str(path)
    return None


@functools.lru_cache(maxsize=1)
def _search_installed_fonts() -> str | None:
    """The best CJK font on this machine; cached because walking font directories is slow-ish and fonts rarely move."""
    for file in FONT_FILES:
        if Path(file).is_file():
            return file
    best: tuple[int, int, str] | None = None
    for directory in FONT_DIRS:
        root = Path(directory).expanduser()
        if not root.is_dir():
            continue
        for parent, _dirs, files in os.walk(root):
            for file_name in files:
                rank = _rank(Path(parent) / file_name)
                if rank is not None and (best is None or rank < best):
                    best = rank
    return best[2] if best else None


_warned_paths: set[str] = set()


def find_cjk_font(configured: str = "") -> str | None:
    """The configured font file if it exists, else a CJK font found on this machine, else None."""
    if configured:
        path = Path(configured).expanduser()
        if path.is_file():
            return str(path)
        if configured not in _warned_paths:  # one warning per bad path, not one per rendered answer
            _warned_paths.add(configured)
            log.warning("font file {} does not exist; searching the usual font locations instead", configured)
    return _search_installed_fonts()


_no_font_warned = threading.Event()


def _warn_no_cjk_font() -> None:
    if _no_font_warned.is_set():
        return
    _no_font_warned.set()
    log.warning(
        "no font with Chinese glyphs found: Chinese text in image replies will show as boxes. "
        "Install one (Debian/Ubuntu: apt install fonts-noto-cjk or fonts-wqy-microhei) "
        "or set the font file path in the config"
    )


def _collection_faces(path: str) -> list[str]:
    """Family names of the faces in a font file (.ttc collections hold several, e.g. SC/TC/JP or a Mono face)."""
    if not path.lower().endswith((".ttc", ".otc")):
        return []
    names: list[str] = []
    for index in range(16):
        try:
            names.append(ImageFont.truetype(path, 12, index=index).getname()[0] or "")
        except OSError:
            break
    return names


def _pick_face(faces: list[str], pattern: str) -> int | None:
    for index, family in enumerate(faces):
        if re.search(pattern, family):
            return index
    return None


# --- inline Markdown ---------------------------------------------------------------------------------------------


class _Style(Enum):
    PLAIN = "plain"
    BOLD = "bold"
    CODE = "code"
    LINK = "link"


_Run = tuple[str, _Style]

_INLINE = re.compile(
    r"`(?P<code>[^`\n]+)`"
    r"|\*\*(?P<bold>.+?)\*\*"
    r"|__(?P<bold2>.+?)__"
    r"|~~(?P<strike>.+?)~~"
    r"|\[(?P<label>[^\]\n]+)\]\((?P<url>[^)\s]+)\)"
    # Single-star emphasis only when not glued to ASCII letters/digits, so "a*b*c" keeps its stars.
    r"|(?<![A-Za-z0-9*\\])\*(?![\s*])(?P<em>[^*\n]+?)(?<![\s*])\*(?![A-Za-z0-9*])"
)


def _inline_runs(text: str, base: _Style = _Style.PLAIN) -> list[_Run]:
    """Split a line into styled runs with the Markdown markers removed."""
    runs: list[_Run] = []
    position = 0
    for match in _INLINE.finditer(text):
        if match.start() > position:
            runs.append((text[position : match.start()], base))
        groups = match.groupdict()
        if groups["code"] is not None:
            runs.append((groups["code"], _Style.CODE))
        elif groups["bold"] is not None or groups["bold2"] is not None:
            runs.extend(_inline_runs(groups["bold"] or groups["bold2"] or "", _Style.BOLD))
        elif groups["label"] is not None:
            runs.append((groups["label"], _Style.LINK))
            if groups["url"] != groups["label"]:  # the picture cannot be clicked, so keep the address readable
                runs.append((f" ({groups['url']})", base))
        else:
            runs.extend(_inline_runs(groups["strike"] or groups["em"] or "", base))
        position = match.end()
    if position < len(text):
        runs.append((text[position:], base))
    return [run for run in runs if run[0]]


# --- wrapping ----------------------------------------------------------------------------------------------------

# A Latin word with its trailing spaces, a run of spaces, or one wide character (CJK, kana, hangul, emoji ...).
_ATOM = re.compile(r"[^\s\u2e80-\U0010ffff]+\s*|\s+|.", re.DOTALL)
_NO_LINE_START = set("，。、；：！？）》」』】〉”’…,.;:!?)]}%")
_NO_LINE_END = set("（《「『【〈“‘([{")


class _Measure:
    """Pixel widths of text in one font, with a per-character cache: summing advances is far faster than
    measuring every prefix, and the missing kerning is a pixel at most."""

    def __init__(self, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
        self.font = font
        self._widths: dict[str, float] = {}

    def __call__(self, text: str) -> float:
        total = 0.0
        widths = self._widths
        for char in text:
            width = widths.get(char)
            if width is None:
                width = widths[char] = float(self.font.getlength(char))
            total += width
        return total


def _atoms(runs: list[_Run], by_word: bool) -> list[_Run]:
    """Unbreakable pieces: Latin words (with trailing space) and single wide characters, with CJK punctuation
    glued to its neighbour so a line never starts with '，' or ends with '（'."""
    atoms: list[_Run] = []
    for text, style in runs:
        pieces = _ATOM.findall(text) if by_word else list(text)
        for piece in pieces:
            if by_word and atoms and atoms[-1][1] is style and _sticks(atoms[-1][0], piece):
                atoms[-1] = (atoms[-1][0] + piece, style)
            else:
                atoms.append((piece, style))
    return atoms


def _sticks(previous: str, piece: str) -> bool:
    return piece[0] in _NO_LINE_START or previous[-1] in _NO_LINE_END


def _merge(line: list[_Run]) -> list[_Run]:
    """Join neighbouring runs of one style so each becomes one draw call."""
    merged: list[_Run] = []
    for text, style in line:
        if merged and merged[-1][1] is style:
            merged[-1] = (merged[-1][0] + text, style)
        else:
            merged.append((text, style))
    return merged


def _wrap(runs: list[_Run], max_width: float, measure: _Measure, by_word: bool = True) -> Iterator[list[_Run]]:
    """Greedy line breaking; a generator so a capped render stops measuring text it will never draw."""
    line: list[_Run] = []
    width = 0.0
    for text, style in _atoms(runs, by_word):
        if measure(text.rstrip()) > max_width:  # a URL or code line longer than a whole line: break anywhere
            if line and max_width - width < measure(text[:4]):  # too little room left to be worth filling
                yield _merge(line)
                line, width = [], 0.0
            for piece in _split_by_width(text, max_width - width, max_width, measure):
                if line and width + measure(piece) > max_width:
                    yield _merge(line)
                    line, width = [], 0.0
                line.append((piece, style))
                width += measure(piece)
            continue
        needed = measure(text.rstrip()) if by_word else measure(text)
        if line and width + needed > max_width:
            yield _merge(line)
            line, width = [], 0.0
            if by_word:
                text = text.lstrip()  # never start a wrapped line with a space
                if not text:
                    continue
        line.append((text, style))
        width += measure(text)
    if line:
        yield _merge(line)


def _split_by_width(text: str, first: float, rest: float, measure: _Measure) -> Iterator[str]:
    """Cut `text` into pieces that fit `first` pixels, then `rest` pixels each (at least one character each)."""
    limit = first
    start, width = 0, 0.0
    for index, char in enumerate(text):
        char_width = measure(char)
        if index > start and width + char_width > limit:
            yield text[start:index]
            start, width, limit = index, 0.0, rest
        width += char_width
    if start < len(text):
        yield text[start:]


# --- blocks ------------------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")  # "# C#" keeps its '#': closers need a space
_LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_QUOTE = re.compile(r"^\s*((?:>\s?)+)(.*)$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


@dataclass(slots=True)
class _Block:
    kind: str  # heading, paragraph, item, code, quote, rule, gap
    text: str = ""
    level: int = 0  # heading level, list nesting or quote depth
    marker: str = ""  # "1." for numbered items, "" for bullets
    lines: list[str] = field(default_factory=list)  # code lines


def _parse_blocks(text: str) -> Iterator[_Block]:
    """Line-based Markdown: enough for chat answers, with no dependency on a full Markdown parser."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n")
    index = 0
    previous_gap = True  # no gap at the very top
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip():
            if not previous_gap:
                yield _Block("gap")
            previous_gap = True
            continue
        previous_gap = False
        fence = _FENCE.match(line)
        if fence:
            code: list[str] = []
            while index < len(lines) and not lines[index].strip().startswith(fence.group(1)):
                code.append(lines[index])
                index += 1
            index += 1  # the closing fence; an unclosed block simply runs to the end
            yield _Block("code", lines=code)
        else:
            yield _line_block(line)


def _line_block(line: str) -> _Block:
    if heading := _HEADING.match(line):
        return _Block("heading", heading.group(2), level=len(heading.group(1)))
    if _RULE.match(line) or _TABLE_SEPARATOR.match(line):
        return _Block("rule")
    if item := _LIST_ITEM.match(line):
        marker = item.group(2)
        return _Block("item", item.group(3), level=len(item.group(1)) // 2, marker="" if marker in "-*+" else marker)
    if quote := _QUOTE.match(line):
        return _Block("quote", quote.group(2), level=quote.group(1).count(">"))
    if line.lstrip().startswith("|"):  # a table row: the pipes read fine as column separators
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        return _Block("paragraph", "  |  ".join(cells))
    return _Block("paragraph", line.strip())


# --- layout ------------------------------------------------------------------------------------------------------

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(slots=True)
class _TextOp:
    x: float
    baseline: int
    text: str
    style: _Style
    font: _Font
    color: tuple[int, int, int]


@dataclass(slots=True)
class _Typeface:
    """One font size with its measurements: line box, baseline offset inside it, and cached widths."""

    font: _Font
    size: int
    measure: _Measure = field(init=False)
    line_height: int = field(init=False)
    baseline: int = field(init=False)

    def __post_init__(self) -> None:
        self.measure = _Measure(self.font)
        self.line_height = round(self.size * 1.5)
        # CJK glyphs sit in an em box from 0.88em above the baseline; centre that box in the 1.5em line.
        self.baseline = round(self.size * 1.13)


class _Page:
    """Where the next line goes, what to draw, and the height cap."""

    def __init__(self, width: int, padding: int, max_height: int, body: _Typeface) -> None:
        self.left = padding
        self.right = width - padding
        self.y = padding
        self.body = body
        # Room kept at the bottom for the "……" line and the padding below it.
        self.limit = max_height - padding - body.line_height
        self.texts: list[_TextOp] = []
        self.shapes: list[tuple[str, tuple[int, int, int, int], tuple[int, int, int]]] = []
        self.full = False

    def take(self, height: int) -> int | None:
        """Reserve `height` pixels and return their top, or None (and stop the page) when the cap is reached."""
        if self.full or self.y + height > self.limit:
            self.full = True
            return None
        top = self.y
        self.y += height
        return top

    def space(self, height: int) -> None:
        self.y = min(self.y + height, self.limit)

    def shape(self, kind: str, box: tuple[float, float, float, float], color: tuple[int, int, int]) -> None:
        left, top, right, bottom = (round(value) for value in box)
        self.shapes.append((kind, (left, top, right, bottom), color))

    def line(self, x: float, runs: list[_Run], face: _Typeface, color: tuple[int, int, int]) -> int | None:
        """Place one wrapped line at x; returns its top, or None when it did not fit under the cap."""
        top = self.take(face.line_height)
        if top is None:
            return None
        for text, style in runs:
            width = face.measure(text)
            if style is _Style.CODE:
                pad = face.size * 0.15
                self.shape(
                    "box", (x - pad, top + face.size * 0.2, x + width + pad, top + face.size * 1.35), CODE_BACKGROUND
                )
            self.texts.append(_TextOp(x, top + face.baseline, text, style, face.font, color))
            x += width
        return top

    def lines(
        self,
        x: float,
        runs: list[_Run],
        face: _Typeface,
        color: tuple[int, int, int],
        by_word: bool = True,
        inset: float = 0,
    ) -> tuple[int, int]:
        """Wrap runs from x to `inset` pixels before the right margin; returns the (top, bottom) pixels used."""
        start = self.y
        for wrapped in _wrap(runs, self.right - inset - x, face.measure, by_word):
            if self.line(x, wrapped, face, color) is None:
                break
        return start, self.y


class MarkdownRenderer:
    """Markdown answer to PNG bytes. Fonts are loaded once per instance and Pillow font objects must not be used
    by two threads at once, so `render` holds a per-instance lock: calling it from worker threads is safe."""

    def __init__(
        self,
        font_path: str = "",
        width: int = 1000,
        font_size: int = 28,
        padding: int = 40,
        *,
        max_height: int = MAX_HEIGHT,
    ) -> None:
        if width - 2 * padding < font_size * 4:
            raise ValueError(f"width {width} leaves no room for text with padding {padding}")
        self.width = width
        self.padding = padding
        self.max_height = max(max_height, 2 * padding + 3 * font_size * 2)
        self.font_path = find_cjk_font(font_path)
        load_body, load_code = self._font_loaders(self.font_path)
        self.body = _Typeface(load_body(font_size), font_size)
        self.headings = {
            level: _Typeface(load_body(round(font_size * scale)), round(font_size * scale))
            for level, scale in ((1, 1.6), (2, 1.35), (3, 1.15))
        }
        code_size = round(font_size * 0.9)
        self.code = _Typeface(load_code(code_size), code_size)
        self._lock = threading.Lock()

    @property
    def line_height(self) -> int:
        """Height of one line of body text in pixels."""
        return self.body.line_height

    @staticmethod
    def _font_loaders(path: str | None) -> tuple[Callable[[int], _Font], Callable[[int], _Font]]:
        """Size -> font for body text and for code, from the CJK font file or Pillow's built-in font."""
        if path is not None:
            faces = _collection_faces(path)
            body_index = _pick_face(faces, r"\b(SC|GB)\b") or 0  # simplified-Chinese glyph shapes when on offer
            code_index = _pick_face(faces, r"(?i)mono") or body_index
            try:
                ImageFont.truetype(path, 12, index=body_index)
            except OSError as error:
                log.warning("cannot load font {}: {}", path, error)
            else:
                # The basic layout is enough for CJK and Latin and much faster than raqm's shaping.
                basic = ImageFont.Layout.BASIC

                def body(size: int) -> _Font:
                    return ImageFont.truetype(path, size, index=body_index, layout_engine=basic)

                def code(size: int) -> _Font:
                    return ImageFont.truetype(path, size, index=code_index, layout_engine=basic)

                return body, code
        _warn_no_cjk_font()

        def default(size: int) -> _Font:
            return ImageFont.load_default(size=size)

        return default, default

    def render(self, text: str) -> bytes:
        """PNG bytes of `text` rendered as Markdown: configured width, height grows with content up to the cap."""
        with self._lock:
            page = self._layout(text)
            image = self._paint(page)
        buffer = io.BytesIO()
        # Level 3 zlib is several times faster than the default 6 and text images compress about as well.
        image.save(buffer, format="PNG", compress_level=3)
        return buffer.getvalue()

    # -- layout --

    def _layout(self, text: str) -> _Page:
        page = _Page(self.width, self.padding, self.max_height, self.body)
        # More characters than could ever fit under the height cap are dropped before any parsing work.
        blocks = _parse_blocks(text[:_MAX_INPUT_CHARS].strip())
        for block in blocks:
            self._place(page, block)
            if page.full:
                break
        if page.full:
            # Draw the ellipsis on the reserved bottom line so a cut answer is visibly cut.
            page.texts.append(
                _TextOp(page.left, page.y + self.body.baseline, _ELLIPSIS, _Style.PLAIN, self.body.font, _MUTED_COLOR)
            )
            page.y += self.body.line_height
        page.y = max(page.y, self.padding + self.body.line_height)  # an empty answer still makes a valid image
        return page

    def _place(self, page: _Page, block: _Block) -> None:
        gap = round(self.body.size * 0.6)
        if block.kind == "gap":
            page.space(gap)
        elif block.kind == "heading":
            self._heading(page, block)
        elif block.kind == "item":
            self._item(page, block)
        elif block.kind == "code":
            self._code(page, block)
        elif block.kind == "quote":
            self._quote(page, block)
        elif block.kind == "rule":
            top = page.take(gap)
            if top is not None:
                page.shape("box", (page.left, top + gap // 2 - 1, page.right, top + gap // 2 + 1), _RULE_COLOR)
        else:
            page.lines(page.left, _inline_runs(block.text), self.body, TEXT_COLOR)

    def _heading(self, page: _Page, block: _Block) -> None:
        if block.level > 3:  # h4-h6 are rare in answers: bold body text is enough
            page.lines(page.left, _inline_runs(block.text, _Style.BOLD), self.body, TEXT_COLOR)
            return
        if page.y > self.padding:
            page.space(round(self.body.size * 0.4))
        face = self.headings[block.level]
        page.lines(page.left, _inline_runs(block.text, _Style.BOLD), face, TEXT_COLOR)
        if block.level <= 2 and not page.full:  # GitHub-style rule under the big headings
            page.shape("box", (page.left, page.y, page.right, page.y + 1), _RULE_COLOR)
            page.space(round(self.body.size * 0.3))

    def _item(self, page: _Page, block: _Block) -> None:
        face = self.body
        x = page.left + block.level * face.size * 1.5
        # Room for two digits at least, so items 1. to 10. start their text at the same x.
        widest = block.marker.rjust(3, "0") if block.marker else ""
        marker_width = max(face.size * 1.2, face.measure(widest) + face.size * 0.3)
        top = page.y
        page.lines(x + marker_width, _inline_runs(block.text), face, TEXT_COLOR)
        if page.y == top:  # nothing fitted under the cap
            return
        if block.marker:
            page.texts.append(_TextOp(x, top + face.baseline, block.marker, _Style.PLAIN, face.font, TEXT_COLOR))
        else:
            # Drawn, not typed: Pillow's built-in font has no '•' glyph.
            radius = face.size * 0.14
            centre_x, centre_y = x + face.size * 0.35, top + face.baseline - face.size * 0.33
            kind = ("dot", "ring", "box")[min(block.level, 2)]
            page.shape(kind, (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius), TEXT_COLOR)

    def _code(self, page: _Page, block: _Block) -> None:
        face = self.code
        inset = round(face.size * 0.6)
        top = page.take(inset)
        if top is None:
            return
        shape_index = len(page.shapes)
        for code_line in block.lines or [""]:
            # Code keeps its spaces and breaks anywhere: word-wrapping would hide indentation.
            page.lines(
                page.left + inset,
                [(code_line, _Style.PLAIN)] if code_line else [(" ", _Style.PLAIN)],
                face,
                TEXT_COLOR,
                by_word=False,
                inset=inset,
            )
            if page.full:
                break
        page.space(inset)
        # The box goes under the text, so insert it before the inline shapes of its lines.
        page.shapes.insert(shape_index, ("round", (page.left, top, page.right, page.y), CODE_BACKGROUND))
        page.space(round(self.body.size * 0.4))

    def _quote(self, page: _Page, block: _Block) -> None:
        face = self.body
        step = face.size
        if block.text.strip():
            top, bottom = page.lines(page.left + block.level * step, _inline_runs(block.text), face, _MUTED_COLOR)
        else:  # a bare ">" line: a short gap that keeps the bar continuous
            top = page.y
            page.take(face.line_height // 2)
            bottom = page.y
        for depth in range(block.level):
            x = page.left + depth * step
            page.shape("box", (x, top, x + 4, bottom), _RULE_COLOR)

    # -- painting --

    def _paint(self, page: _Page) -> Image.Image:
        height = min(page.y + self.padding, self.max_height)
        image = Image.new("RGB", (self.width, height), _BACKGROUND)
        draw = ImageDraw.Draw(image)
        for kind, box, color in page.shapes:
            _draw_shape(draw, kind, box, color, radius=round(self.body.size * 0.3))
        for op in page.texts:
            _draw_text(draw, op)
        return image


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], color: tuple[int, int, int], radius: int
) -> None:
    if kind == "round":
        draw.rounded_rectangle(box, radius=radius, fill=color)
    elif kind == "dot":
        draw.ellipse(box, fill=color)
    elif kind == "ring":
        draw.ellipse(box, outline=color, width=2)
    else:
        draw.rectangle(box, fill=color)


_STYLE_COLORS = {_Style.LINK: _LINK_COLOR, _Style.CODE: _INLINE_CODE_COLOR}


def _draw_text(draw: ImageDraw.ImageDraw, op: _TextOp) -> None:
    color = op.color if op.color == _MUTED_COLOR else _STYLE_COLORS.get(op.style, op.color)
    draw.text((op.x, op.baseline), op.text, font=op.font, fill=color, anchor="ls")
    if op.style is _Style.BOLD:
        # Faux bold: the same font drawn again one pixel right; there is no bold face to rely on.
        draw.text((op.x + 1, op.baseline), op.text, font=op.font, fill=color, anchor="ls")
