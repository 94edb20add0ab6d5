"""MarkdownRenderer and find_cjk_font: valid PNGs, layout that grows with content, the height cap, font search."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFont

from conversation import render_image
from conversation.render_image import CODE_BACKGROUND, MAX_HEIGHT, MarkdownRenderer, find_cjk_font

WIDTH = 800
PADDING = 40


@pytest.fixture(scope="module")
def renderer() -> MarkdownRenderer:
    """Whatever font this machine has (a CJK one or Pillow's built-in): every test here must pass with both."""
    return MarkdownRenderer(width=WIDTH, padding=PADDING)


@pytest.fixture
def fonts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the font search at an empty temp dir so results do not depend on the machine's fonts."""
    directory = tmp_path / "fonts"
    directory.mkdir()
    monkeypatch.setattr(render_image, "FONT_DIRS", (str(directory),))
    monkeypatch.setattr(render_image, "FONT_FILES", ())
    monkeypatch.setattr(render_image, "_warned_paths", set())
    monkeypatch.setattr(render_image, "_no_font_warned", threading.Event())
    render_image._search_installed_fonts.cache_clear()
    yield directory
    render_image._search_installed_fonts.cache_clear()  # later tests must see the real machine again


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def darkest(image: Image.Image) -> int:
    low, _high = image.convert("L").getextrema()
    assert isinstance(low, int)  # a one-band image gives (min, max) ints
    return low


def count_color(image: Image.Image, color: tuple[int, int, int]) -> int:
    colors = image.getcolors(maxcolors=image.width * image.height) or []
    return sum(count for count, value in colors if value == color)


def height_of(renderer: MarkdownRenderer, text: str) -> int:
    return open_png(renderer.render(text)).height


# --- images --------------------------------------------------------------------------------------------------------


def test_png_is_valid_with_configured_width(renderer: MarkdownRenderer) -> None:
    image = open_png(renderer.render("你好，world！这是一条**测试**回复。"))
    assert image.size[0] == WIDTH
    assert image.mode == "RGB"
    # Something dark was drawn on the white page.
    assert darkest(image) < 100


def test_empty_answer_still_makes_an_image(renderer: MarkdownRenderer) -> None:
    image = open_png(renderer.render("   \n\n  "))
    assert image.width == WIDTH
    assert image.height >= 2 * PADDING


def test_height_grows_with_the_text(renderer: MarkdownRenderer) -> None:
    one = height_of(renderer, "第一段：短短的一句话。")
    paragraphs = 10
    ten = height_of(renderer, "\n\n".join(f"第{i}段：短短的一句话。" for i in range(paragraphs)))
    assert ten > one
    line = renderer.line_height
    # Ten one-line paragraphs: at least ten lines, and at most ten lines plus their gaps and the padding.
    assert paragraphs * line <= ten - 2 * PADDING <= paragraphs * line * 2


def test_long_paragraph_wraps_to_several_lines(renderer: MarkdownRenderer) -> None:
    short = height_of(renderer, "汉字")
    long = height_of(renderer, "汉字" * 200)  # no spaces anywhere: must still wrap, by character
    assert long >= short + 5 * renderer.line_height


@pytest.mark.parametrize(("bigger", "smaller"), [("# 标题", "## 标题"), ("## 标题", "### 标题"), ("### 标题", "标题")])
def test_headings_are_taller_than_body_text(renderer: MarkdownRenderer, bigger: str, smaller: str) -> None:
    assert height_of(renderer, bigger) > height_of(renderer, smaller)


def test_code_block_has_a_grey_box(renderer: MarkdownRenderer) -> None:
    image = open_png(renderer.render("```python\nprint('你好')\n```"))
    # The box starts at the top-left padding; just inside it, above the text, is plain box background.
    assert image.getpixel((PADDING + 20, PADDING + 4)) == CODE_BACKGROUND
    assert count_color(image, CODE_BACKGROUND) > (WIDTH - 2 * PADDING) * renderer.line_height // 2
    plain = open_png(renderer.render("print('你好')"))
    assert count_color(plain, CODE_BACKGROUND) == 0


def test_long_code_lines_wrap_inside_the_box(renderer: MarkdownRenderer) -> None:
    one_line = height_of(renderer, "```\nx = 1\n```")
    wrapped = height_of(renderer, "```\n" + "x" * 300 + "\n```")
    assert wrapped > one_line


def test_lists_quotes_and_rules_render(renderer: MarkdownRenderer) -> None:
    text = "1. 第一项\n2. 第二项\n   - 嵌套\n\n> 引用\n>\n> 第二行\n\n---\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    image = open_png(renderer.render(text))
    assert image.width == WIDTH
    assert image.height > 8 * renderer.line_height


def test_very_long_answer_is_capped() -> None:
    capped = MarkdownRenderer(width=WIDTH, padding=PADDING, max_height=3000)
    image = open_png(capped.render("\n".join(f"第{i}行：一些文字" for i in range(1000))))
    assert 3000 - 2 * capped.line_height <= image.height <= 3000
    # The "……" line sits at the bottom, just above the padding.
    bottom = image.crop((0, image.height - PADDING - capped.line_height, WIDTH, image.height - PADDING))
    assert darkest(bottom) < 200


def test_default_cap_holds_for_a_runaway_answer(renderer: MarkdownRenderer) -> None:
    image = open_png(renderer.render("没有尽头的回答。" * 100_000))
    assert image.height <= MAX_HEIGHT


def test_3000_characters_render_quickly(renderer: MarkdownRenderer) -> None:
    paragraph = "这是一段用于测试渲染速度的中文文本，包含一些 English words、`code` 和 **粗体**。"
    text = "\n\n".join(["## 小标题", paragraph * 3, "- " + paragraph, "```\nprint('hello')\n```"] * 20)[:3000]
    started = time.perf_counter()
    renderer.render(text)
    assert time.perf_counter() - started < 2.0


def test_render_is_safe_from_several_threads(renderer: MarkdownRenderer) -> None:
    texts = [f"# 标题 {i}\n\n正文 {i} " * 20 for i in range(4)]
    expected = [renderer.render(text) for text in texts]
    results: dict[int, bytes] = {}

    def work(index: int) -> None:
        results[index] = renderer.render(texts[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(texts))] == expected


# --- inline markup and wrapping ------------------------------------------------------------------------------------


def test_inline_markers_are_removed() -> None:
    runs = render_image._inline_runs("用 `open()` 和 **with** 读取，见[文档](https://d.example)，a*b*c 不变")
    text = "".join(part for part, _style in runs)
    assert text == "用 open() 和 with 读取，见文档 (https://d.example)，a*b*c 不变"
    styles = {part: style.value for part, style in runs}
    assert styles["open()"] == "code"
    assert styles["with"] == "bold"
    assert styles["文档"] == "link"


def wrap(text: str, width: float) -> list[str]:
    measure = render_image._Measure(ImageFont.load_default(size=20))
    lines = render_image._wrap([(text, render_image._Style.PLAIN)], width, measure)
    return ["".join(part for part, _style in line) for line in lines]


def test_latin_text_breaks_at_spaces() -> None:
    measure = render_image._Measure(ImageFont.load_default(size=20))
    lines = wrap("hello world again and again", measure("hello world again"))
    assert [line.strip() for line in lines] == ["hello world again", "and again"]


def test_text_without_spaces_breaks_by_character() -> None:
    lines = wrap("x" * 100, 200)
    assert len(lines) > 1
    assert "".join(lines) == "x" * 100


def test_cjk_punctuation_never_starts_a_line() -> None:
    for width in range(40, 400, 7):
        for line in wrap("一二三，四五六。七八九！十（一）二", width)[1:]:
            assert line[0] not in "，。！）"


# --- font search ---------------------------------------------------------------------------------------------------


def test_configured_font_is_used_when_it_exists(fonts_dir: Path, tmp_path: Path) -> None:
    configured = tmp_path / "my-font.ttf"
    configured.write_bytes(b"not really a font")
    assert find_cjk_font(str(configured)) == str(configured)


def test_search_finds_a_cjk_font_by_name(fonts_dir: Path) -> None:
    nested = fonts_dir / "opentype" / "noto"
    nested.mkdir(parents=True)
    (fonts_dir / "DejaVuSans.ttf").write_bytes(b"")
    (nested / "NotoSansCJK-Bold.ttc").write_bytes(b"")
    (nested / "NotoSansCJK-Regular.ttc").write_bytes(b"")
    (fonts_dir / "wqy-microhei.ttc").write_bytes(b"")
    assert find_cjk_font() == str(nested / "NotoSansCJK-Regular.ttc")


def test_missing_configured_font_warns_and_searches(fonts_dir: Path, log_lines: list[str]) -> None:
    (fonts_dir / "wqy-zenhei.ttc").write_bytes(b"")
    assert find_cjk_font("/nowhere/font.ttf") == str(fonts_dir / "wqy-zenhei.ttc")
    find_cjk_font("/nowhere/font.ttf")
    assert sum("/nowhere/font.ttf" in line for line in log_lines) == 1


def test_no_font_anywhere_falls_back_and_warns_once(fonts_dir: Path, log_lines: list[str]) -> None:
    assert find_cjk_font() is None
    first = MarkdownRenderer(width=WIDTH)
    second = MarkdownRenderer(width=WIDTH)
    assert first.font_path is None
    image = open_png(second.render("# 标题\n\n中文 and English\n\n```\ncode\n```"))
    assert image.width == WIDTH
    warnings = [line for line in log_lines if "Chinese" in line]
    assert len(warnings) == 1
    assert "fonts-noto-cjk" in warnings[0]


def test_unreadable_font_file_falls_back(fonts_dir: Path, tmp_path: Path, log_lines: list[str]) -> None:
    broken = tmp_path / "broken.ttc"
    broken.write_bytes(b"not a font")
    image = open_png(MarkdownRenderer(font_path=str(broken), width=WIDTH).render("你好"))
    assert image.width == WIDTH
    assert any("cannot load font" in line for line in log_lines)


def test_too_narrow_width_is_rejected() -> None:
    with pytest.raises(ValueError):
        MarkdownRenderer(width=100, padding=40)
