"""Turn a model's reply into platform-sized text parts."""

from __future__ import annotations


def split_text(text: str, limit: int) -> list[str]:
    """Split at paragraph, then line boundaries so each part has at most `limit` characters."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, limit):
        candidate = f"{current}\n\n{piece}" if current else piece
        if len(candidate) <= limit:
            current = candidate
        else:
            if current:
                parts.append(current)
            current = piece
    if current:
        parts.append(current)
    return parts


def _pieces(text: str, limit: int) -> list[str]:
    """Paragraphs no longer than `limit`: long ones are cut at line ends, then hard."""
    out: list[str] = []
    for paragraph in text.split("\n\n"):
        if len(paragraph) <= limit:
            out.append(paragraph)
            continue
        line_group = ""
        for line in paragraph.split("\n"):
            while len(line) > limit:
                if line_group:
                    out.append(line_group)
                    line_group = ""
                out.append(line[:limit])
                line = line[limit:]
            candidate = f"{line_group}\n{line}" if line_group else line
            if len(candidate) <= limit:
                line_group = candidate
            else:
                out.append(line_group)
                line_group = line
        if line_group:
            out.append(line_group)
    return [p for p in out if p.strip()]
