"""Streamed replies: reasoning stripped, paragraphs grouped, code blocks and the length limit respected."""

from __future__ import annotations

import random
import re
import time

import pytest

from conversation.streaming import ParagraphStream, strip_reasoning

FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})")

PROSE = (
    "The quick brown fox jumps over the lazy dog. " * 3
    + "\n\nShort one.\n\nAnother fairly ordinary paragraph that talks about nothing in particular, "
    + "just to take up some room.\nIt has a second line.\n\n"
    + "Last words."
)
CJK = "\n\n".join(
    f"这是第{n}段。流式输出的回复会被切成若干条消息，每条都不超过平台的长度限制，而且不会把代码块切开。"
    for n in range(1, 9)
)
CODE = (
    "Here is the script you asked for:\n\n"
    "```python\n"
    "import sys\n\n\n"
    "def main() -> None:\n"
    "    print('hello')\n\n"
    "    print('world')\n\n\n"
    "if __name__ == '__main__':\n"
    "    main()\n"
    "```\n\n"
    "Run it with `python script.py`.\n\n"
    "   ~~~ text\n"
    "a tilde block, indented\n\n"
    "with a blank line inside\n"
    "   ~~~\n\n"
    "Done."
)
MIXED = (
    "<think>\nThe user wants a greeting.\n\nI should be brief.\n</think>\n\n"
    + PROSE
    + "\n\n```\nno language\n\nstill code\n```\n\n"
    + CJK
)
WALL = "没有换行的一堵文字墙。" * 40 + "and then some latin text without any line break " * 10
TEXTS = [PROSE, CJK, CODE, MIXED, WALL]


def stream(deltas: list[str], limit: int = 300, min_chars: int = 80, strip_think: bool = True) -> list[str]:
    splitter = ParagraphStream(limit, min_chars=min_chars, strip_think=strip_think)
    parts: list[str] = []
    for delta in deltas:
        parts += splitter.feed(delta)
    return parts + splitter.finish()


def random_chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    chunks: list[str] = []
    i = 0
    while i < len(text):
        size = rng.randint(1, 40)
        chunks.append(text[i : i + size])
        i += size
    return chunks


def fence_lines(part: str) -> int:
    return sum(1 for line in part.split("\n") if FENCE_LINE.match(line))


def assert_reassembles(parts: list[str], text: str) -> None:
    """The parts, in order, are the text with only whitespace dropped where one part ends and the next begins."""
    pos = 0
    for part in parts:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        assert text.startswith(part, pos), f"part does not continue the text at {pos}: {part[:40]!r}"
        pos += len(part)
    assert not text[pos:].strip()


def assert_well_formed(parts: list[str], limit: int) -> None:
    for part in parts:
        assert part
        assert part == part.strip()
        assert len(part) <= limit


# --- strip_reasoning ---------------------------------------------------------------------------------


def test_plain_text_is_returned_unchanged() -> None:
    for text in ["", "  hello\n\nworld  ", "I rethink> nothing", "<b>bold</b>", "a < b > c"]:
        assert strip_reasoning(text) == text


def test_a_think_block_and_the_whitespace_after_it_go() -> None:
    assert strip_reasoning("<think>\nlet me see\n</think>\n\nThe answer is 4.") == "The answer is 4."


def test_tags_are_case_insensitive_and_thinking_works_too() -> None:
    assert strip_reasoning("<THINK>a</Think>x") == "x"
    assert strip_reasoning("<thinking>\nline one\n\nline two\n</thinking>\nanswer") == "answer"
    assert strip_reasoning("<Thinking>a</THINKING>answer") == "answer"


def test_several_blocks_are_all_removed() -> None:
    assert strip_reasoning("<think>a</think>one <think>b\nc</think>two") == "one two"


def test_an_unclosed_opening_tag_at_the_start_means_everything_is_reasoning() -> None:
    assert strip_reasoning("<think>still thinking\n\nabout it") == ""
    assert strip_reasoning("  \n<think>still thinking") == ""


def test_an_unclosed_tag_later_hides_the_rest() -> None:
    assert strip_reasoning("Answer first. <think>then thoughts") == "Answer first. "


def test_a_bare_closing_tag_drops_everything_before_it() -> None:
    assert strip_reasoning("The user asks about X.\n\nOkay.\n</think>\n\nX is Y.") == "X is Y."
    assert strip_reasoning("</think>answer") == "answer"
    assert strip_reasoning("reasoning</THINKING>\nanswer") == "answer"


def test_a_stray_closing_tag_after_a_block_is_only_dropped() -> None:
    assert strip_reasoning("<think>a</think>b</think>c") == "bc"


# --- ParagraphStream: grouping ---------------------------------------------------------------------


def test_short_paragraphs_are_grouped_until_min_chars() -> None:
    paragraphs = [f"paragraph {n} " + "x" * 48 for n in range(7)]  # 60 characters each
    splitter = ParagraphStream(1000, min_chars=150)
    released: list[list[str]] = [splitter.feed(p + "\n\n") for p in paragraphs]
    # Two paragraphs (122 characters) are not enough; the third completes a part.
    assert released[0] == released[1] == []
    assert released[2] == ["\n\n".join(paragraphs[:3])]
    assert released[5] == ["\n\n".join(paragraphs[3:6])]
    assert splitter.finish() == [paragraphs[6]]


def test_a_paragraph_is_held_until_its_blank_line_arrives() -> None:
    splitter = ParagraphStream(1000, min_chars=10)
    assert splitter.feed("a paragraph long enough to send") == []
    assert splitter.feed("\n") == []  # a line break alone may be followed by more of the same paragraph
    assert splitter.feed("\n") == ["a paragraph long enough to send"]
    assert splitter.feed("more") == []
    assert splitter.finish() == ["more"]


def test_finish_on_empty_or_blank_input_gives_nothing() -> None:
    assert ParagraphStream(100).finish() == []
    splitter = ParagraphStream(100)
    assert splitter.feed("\n\n   \n\n") == []
    assert splitter.finish() == []
    assert ParagraphStream(100).feed("") == []


def test_the_text_already_within_limit_becomes_one_part_at_finish() -> None:
    assert stream([PROSE], limit=2000, min_chars=2000) == [PROSE.strip()]


def test_feed_after_finish_is_an_error_and_limit_must_be_positive() -> None:
    splitter = ParagraphStream(100)
    splitter.finish()
    assert splitter.finish() == []
    with pytest.raises(RuntimeError):
        splitter.feed("late")
    with pytest.raises(ValueError):
        ParagraphStream(0)


# --- ParagraphStream: the same parts however the text is chunked ------------------------------------


@pytest.mark.parametrize("text", TEXTS, ids=["prose", "cjk", "code", "mixed", "wall"])
@pytest.mark.parametrize(("limit", "min_chars"), [(300, 80), (120, 0), (60, 200), (5000, 200)])
def test_one_character_deltas_give_the_same_parts_as_one_delta(text: str, limit: int, min_chars: int) -> None:
    whole = stream([text], limit, min_chars)
    assert stream(list(text), limit, min_chars) == whole
    for seed in range(3):
        assert stream(random_chunks(text, seed), limit, min_chars) == whole
    assert_well_formed(whole, limit)


@pytest.mark.parametrize("text", TEXTS, ids=["prose", "cjk", "code", "mixed", "wall"])
def test_parts_joined_reproduce_the_stored_text(text: str) -> None:
    splitter = ParagraphStream(300, min_chars=80)
    parts = [part for delta in random_chunks(text, 7) for part in splitter.feed(delta)] + splitter.finish()
    assert splitter.text == strip_reasoning(text)
    assert "think>" not in splitter.text
    assert_reassembles(parts, splitter.text)


# --- ParagraphStream: code blocks ---------------------------------------------------------------------


@pytest.mark.parametrize("min_chars", [0, 10, 80])
def test_a_code_block_with_blank_lines_is_never_split(min_chars: int) -> None:
    parts = stream(list(CODE), limit=1000, min_chars=min_chars)
    for part in parts:
        assert fence_lines(part) % 2 == 0, part
    python_block = CODE[CODE.index("```python") : CODE.index("```\n\nRun") + 3]
    assert any(python_block in part for part in parts)
    assert_reassembles(parts, CODE)
    if min_chars == 0:
        assert parts[0] == "Here is the script you asked for:"  # prose around the block is still split off


def test_a_code_block_three_times_the_limit_is_split_with_closed_and_reopened_fences() -> None:
    limit = 200
    body = "\n".join(f"    value_{n:03d} = compute({n}, scale=2)" for n in range(20))  # about 3 × limit
    assert len(body) > 3 * limit
    text = f"Intro line.\n\n```python\n{body}\n```\n\nAfter the code."
    parts = stream(list(text), limit=limit, min_chars=500)
    assert_well_formed(parts, limit)
    assert parts[0] == "Intro line."
    assert parts[-1] == "After the code."
    code_parts = parts[1:-1]
    assert len(code_parts) >= 4
    for part in code_parts:
        assert part.startswith("```python\n")
        assert part.endswith("\n```")
        assert fence_lines(part) == 2
    # Without the added fences, the code parts are the original block, line for line.
    lines = [line for part in code_parts for line in part.split("\n")[1:-1]]
    assert "\n".join(lines) == body


def test_tilde_fences_with_a_longer_marker_are_reopened_with_the_same_marker() -> None:
    body = "\n".join(f"row {n}" for n in range(40))
    text = f"~~~~ csv\n{body}\n~~~~"
    parts = stream([text], limit=80, min_chars=0)
    assert_well_formed(parts, 80)
    assert len(parts) > 2
    for part in parts:
        assert part.startswith("~~~~ csv\n") or part.startswith("~~~~csv\n")
        assert part.endswith("\n~~~~")


def test_a_code_line_longer_than_the_limit_is_hard_cut_inside_the_block() -> None:
    text = "```\n" + "y" * 500 + "\n```"
    parts = stream(list(text), limit=100, min_chars=0)
    assert_well_formed(parts, 100)
    for part in parts:
        assert part.startswith("```\n") and part.endswith("\n```") and fence_lines(part) == 2
    assert "".join(part[4:-4] for part in parts) == "y" * 500


def test_a_backtick_run_with_backticks_after_it_is_not_a_fence() -> None:
    text = "```inline``` code\n\n" + "p" * 30 + "\n\n" + "q" * 30
    assert stream([text], limit=1000, min_chars=20) == ["```inline``` code\n\n" + "p" * 30, "q" * 30]


def test_a_block_cut_just_before_its_closing_fence_leaves_no_empty_block() -> None:
    head = "```\n" + "\n".join(["0123456789"] * 3) + "\n"  # 37 characters
    text = head + "   ``````\n\nmore"  # the long closing line is still being written when the limit is hit
    parts = stream(list(text), limit=41, min_chars=0)
    assert parts == [head + "```", "more"]


# --- ParagraphStream: text longer than the limit ---------------------------------------------------


def test_a_wall_of_text_is_hard_cut_at_the_limit() -> None:
    parts = stream(["x" * 1000], limit=300)
    assert parts == ["x" * 300, "x" * 300, "x" * 300, "x" * 100]
    cjk = "字" * 650
    assert stream(list(cjk), limit=300) == ["字" * 300, "字" * 300, "字" * 50]


def test_a_long_paragraph_is_cut_at_its_last_line_break_that_fits() -> None:
    lines = [f"line {n} " + "z" * 40 for n in range(20)]  # 48 characters each
    parts = stream(["\n".join(lines)], limit=200, min_chars=1000)
    assert_well_formed(parts, 200)
    assert parts[0] == "\n".join(lines[:4])  # 4 lines and their breaks are 195 characters
    assert [line for part in parts for line in part.split("\n")] == lines


def test_short_paragraphs_then_an_overflow_cut_outside_the_code_block() -> None:
    text = "Intro.\n\nSee below:\n```\n" + "c\n" * 150 + "```"
    parts = stream([text], limit=100, min_chars=200)
    assert_well_formed(parts, 100)
    assert parts[0] == "Intro.\n\nSee below:"
    assert all(fence_lines(part) == 2 for part in parts[1:])


# --- ParagraphStream: reasoning ------------------------------------------------------------------------


def test_a_think_block_split_across_deltas_is_never_released() -> None:
    splitter = ParagraphStream(100, min_chars=0)
    parts: list[str] = []
    for delta in ["<th", "ink>secret", "\n\nmore secret\n\n", "</thi", "nk>answer\n\n", "second"]:
        parts += splitter.feed(delta)
    parts += splitter.finish()
    assert parts == ["answer", "second"]
    assert splitter.text == "answer\n\nsecond"


@pytest.mark.parametrize("seed", range(5))
def test_reasoning_in_random_chunks_never_appears_in_a_part(seed: int) -> None:
    text = (
        "<THINKING>\n" + "secret thought\n\n" * 30 + "</thinking>\n\n" + PROSE + "\n\n<think>second secret</think>done"
    )
    splitter = ParagraphStream(120, min_chars=0)
    parts = [part for delta in random_chunks(text, seed) for part in splitter.feed(delta)] + splitter.finish()
    assert parts
    assert not any("secret" in part or "think" in part.lower() for part in parts)
    assert splitter.text == strip_reasoning(text)
    assert_reassembles(parts, splitter.text)


def test_an_unclosed_think_block_releases_nothing() -> None:
    splitter = ParagraphStream(50, min_chars=0)
    assert splitter.feed("<think>" + "pondering\n\n" * 50) == []
    assert splitter.text == ""
    assert splitter.finish() == []


def test_a_bare_closing_tag_drops_the_unsent_reasoning_before_it() -> None:
    splitter = ParagraphStream(1000, min_chars=200)
    parts = splitter.feed("The user wants X.\n\nShort reasoning.")
    parts += splitter.feed("\n</think>\n\nX it is.")
    parts += splitter.finish()
    assert parts == ["X it is."]
    assert splitter.text == "X it is."


def test_a_bare_closing_tag_after_parts_were_sent_cannot_take_them_back() -> None:
    splitter = ParagraphStream(1000, min_chars=10)
    parts = splitter.feed("Thinking out loud here.\n\n")
    assert parts == ["Thinking out loud here."]
    parts += splitter.feed("</think>\n\nThe answer.") + splitter.finish()
    assert parts == ["Thinking out loud here.", "The answer."]
    assert splitter.text == "Thinking out loud here.\n\n\n\nThe answer."  # stored as it was shown


def test_half_a_tag_at_the_end_is_plain_text() -> None:
    splitter = ParagraphStream(100)
    assert splitter.feed("1 <th") == []
    assert splitter.text == "1 <th"
    assert splitter.finish() == ["1 <th"]
    assert stream(["a <", "b and c </", "p>"]) == ["a <b and c </p>"]


def test_strip_think_false_keeps_the_tags() -> None:
    text = "<think>visible</think>\n\nanswer"
    splitter = ParagraphStream(100, min_chars=0, strip_think=False)
    parts = [part for delta in ["<th", "ink>visible</th", "ink>\n\nanswer"] for part in splitter.feed(delta)]
    parts += splitter.finish()
    assert parts == ["<think>visible</think>", "answer"]
    assert splitter.text == text


# --- cost ----------------------------------------------------------------------------------------------


def test_a_long_reply_in_tiny_deltas_is_processed_in_linear_time() -> None:
    def run(repeat: int) -> float:
        text = (MIXED + "\n\n" + CODE + "\n\n" + WALL + "\n\n") * repeat
        splitter = ParagraphStream(2000, min_chars=200)
        started = time.perf_counter()
        for i in range(0, len(text), 3):
            splitter.feed(text[i : i + 3])
        splitter.finish()
        return time.perf_counter() - started

    run(2)  # warm up
    small = min(run(10) for _ in range(3))
    large = min(run(40) for _ in range(3))
    assert large < small * 8  # four times the text: about four times the time, where quadratic work would be 16
