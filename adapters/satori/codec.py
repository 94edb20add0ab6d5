"""Translate Satori message content (its XML-like elements) to and from the shared message model."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from adapters.fields import file_uri as _file_uri
from core.message import (
    At,
    AtAll,
    Card,
    Face,
    File,
    Forward,
    ForwardNode,
    Image,
    Markdown,
    MarketFace,
    Message,
    Quote,
    Raw,
    Segment,
    Text,
    Video,
    Voice,
)

PROTOCOL = "satori"

# Quotes, forwards and formatting nest whole messages; past this depth nested content is reduced to its text
# instead of being recursed into, so runaway or hostile nesting cannot exhaust the stack.
_MAX_DEPTH = 16

# The parser itself is iterative, but the tree it builds is walked recursively (decode, repr, ==); an open tag
# deeper than this is kept as text so no consumer can hit the recursion limit.
_MAX_NESTING = 200


@dataclass(frozen=True, slots=True)
class Element:
    """One parsed element; text is `Element("text", {"content": ...})`, a bare attribute's value is "true"."""

    type: str
    # A dict keeps the wire order of attributes; left out of the hash so an Element stays hashable.
    attrs: dict[str, str] = field(default_factory=dict, hash=False)
    children: tuple[Element, ...] = ()


# --- escapes -------------------------------------------------------------------------------------

# Bounded digit counts: a 10,000-digit "&#…;" must not become a huge int conversion.
_ENTITY = re.compile(r"&(?:#([0-9]{1,7})|#[xX]([0-9a-fA-F]{1,6})|(amp|lt|gt|quot|apos));")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _entity(match: re.Match[str]) -> str:
    if match.group(3):
        return _NAMED[match.group(3)]
    code = int(match.group(1)) if match.group(1) else int(match.group(2), 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return match.group(0)  # not a character: keep what was written rather than invent one
    return chr(code)


def _unescape(text: str) -> str:
    # One pass, so "&amp;lt;" becomes the literal "&lt;" and is not unescaped twice.
    return _ENTITY.sub(_entity, text) if "&" in text else text


def _escape(text: str, attr: bool = False) -> str:
    # `&` first, or the `&` of every other escape would itself be escaped.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if attr else text


# --- parsing -------------------------------------------------------------------------------------

# A tag: `<name …>`, `</name>` or `<name …/>`. The attribute part may not contain `>` (escapers turn it into
# `&gt;`), which keeps the scan linear: a tag attempt never looks past the next `>`. `llonebot:ark` needs `:`.
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_:.-]*+)(?=[\s/>])([^>]*)>")
# `k`, `k="v"`, `k='v'`, and (tolerated) `k=v`.
_ATTR = re.compile(r"""([^\s=/"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"']+)))?""")
_COMMENT_OPEN = "<!--"
_COMMENT_CLOSE = "-->"


@dataclass(slots=True)
class _Tag:
    name: str
    close: bool
    empty: bool
    attrs: dict[str, str]
    source: str


# Text still being collected: runs of text are kept as string pieces and joined once, so merging the many
# pieces of a long garbage input stays linear.
_Children: TypeAlias = list["Element | list[str]"]


@dataclass(slots=True)
class _Open:
    type: str
    attrs: dict[str, str]
    source: str
    children: _Children = field(default_factory=list)


def _attrs(text: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for match in _ATTR.finditer(text):
        key, double, single, bare = match.groups()
        value = double if double is not None else single if single is not None else bare
        attrs[key] = "true" if value is None else _unescape(value)
    return attrs


# JavaScript's `\s`, which @satorijs/element trims with: unlike Python's str.strip() it leaves the
# separators U+001C..U+001F and U+0085 alone.
_JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(map(chr, range(0x2000, 0x200B)))


def _trim(text: str) -> str:
    """Satori drops a whitespace run at either end of a text chunk when it holds a line break; inner newlines stay.

    Done by hand rather than with `^\\s*\\n\\s*` / `\\s*\\n\\s*$`: the end-anchored pattern is quadratic on a long
    run of spaces without a newline.
    """
    stripped = text.lstrip(_JS_SPACE)
    if "\n" in text[: len(text) - len(stripped)]:
        text = stripped
    stripped = text.rstrip(_JS_SPACE)
    if "\n" in text[len(stripped) :]:
        text = stripped
    return text


def _tokens(source: str) -> list[str | _Tag]:
    tokens: list[str | _Tag] = []

    def text(raw: str) -> None:
        # Trimmed before unescaping, so whitespace a sender wrote as `&#10;` is kept deliberately.
        value = _unescape(_trim(raw))
        if value:
            tokens.append(value)

    last_gt = source.rfind(">")
    comments = True  # once a `<!--` is unterminated, every later one is too: stop looking (keeps it linear)
    text_start = pos = 0
    while (lt := source.find("<", pos)) >= 0 and lt < last_gt:
        if comments and source.startswith(_COMMENT_OPEN, lt):
            end = source.find(_COMMENT_CLOSE, lt + len(_COMMENT_OPEN))
            if end >= 0:
                text(source[text_start:lt])
                text_start = pos = end + len(_COMMENT_CLOSE)
                continue
            comments = False
        match = _TAG.match(source, lt)
        if match is None:
            pos = lt + 1  # a lone `<` (e.g. "1 < 2") is just text
            continue
        text(source[text_start:lt])
        close, name, rest = match.groups()
        rest = rest.rstrip()
        empty = rest.endswith("/")
        if empty:
            rest = rest[:-1]
        tokens.append(_Tag(name.lower(), bool(close), empty and not close, _attrs(rest), match.group(0)))
        text_start = pos = match.end()
    text(source[text_start:])
    return tokens


def _add_text(children: _Children, text: str) -> None:
    last = children[-1] if children else None
    if isinstance(last, list):
        last.append(text)
    else:
        children.append([text])


def _finish(children: _Children) -> tuple[Element, ...]:
    out: list[Element] = []
    for child in children:
        if isinstance(child, list):
            content = "".join(child)
            if content:
                out.append(Element("text", {"content": content}))
        else:
            out.append(child)
    return tuple(out)


def _rollback(stack: list[_Open]) -> None:
    """An open tag that never closes is text: its source becomes text and its children move up to its parent."""
    unclosed = stack.pop()
    parent = stack[-1].children
    _add_text(parent, unclosed.source)
    for child in unclosed.children:
        last = parent[-1]
        if isinstance(child, list) and isinstance(last, list):
            last.extend(child)  # whole runs at once: a deep rollback of long text stays cheap
        else:
            parent.append(child)


def parse_content(content: str) -> list[Element]:
    """Parse Satori content into elements; never raises, anything that is not a well-formed element is text."""
    if not isinstance(content, str):
        return []
    root = _Open("", {}, "")
    stack = [root]
    # How many of each tag are open, so a close nothing matches is known without scanning the stack.
    open_counts: dict[str, int] = {}

    def pop() -> _Open:
        done = stack[-1]
        open_counts[done.type] -= 1
        return done

    for token in _tokens(content):
        if isinstance(token, str):
            _add_text(stack[-1].children, token)
        elif token.close:
            if not open_counts.get(token.name):
                _add_text(stack[-1].children, token.source)  # a close with no open is text too
                continue
            while stack[-1].type != token.name:
                pop()
                _rollback(stack)
            done = pop()
            stack.pop()
            stack[-1].children.append(Element(done.type, done.attrs, _finish(done.children)))
        elif token.empty:
            stack[-1].children.append(Element(token.name, token.attrs))
        elif len(stack) > _MAX_NESTING:
            _add_text(stack[-1].children, token.source)
        else:
            stack.append(_Open(token.name, token.attrs, token.source))
            open_counts[token.name] = open_counts.get(token.name, 0) + 1
    while len(stack) > 1:
        _rollback(stack)
    return list(_finish(root.children))


# --- decoding ------------------------------------------------------------------------------------

_Out: TypeAlias = list[Segment]

# Satori's formatting elements carry no meaning the model keeps: their content stands for them.
_TRANSPARENT = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "del", "spl", "code", "sup", "sub", "template"})
# Who a quote or forward node came from: the reference SDK writes `<author>`, some implementations `<user>`.
_AUTHORS = frozenset({"author", "user"})
_FALSE = frozenset({"", "false", "0"})


def _attr(el: Element, *names: str) -> str:
    """The first non-empty of several spellings (the SDK hyphenates camelCase keys, others keep them)."""
    for name in names:
        value = el.attrs.get(name)
        if value:
            return value
    return ""


def _int(value: str) -> int:
    value = value.strip()
    # Sizes and durations are informational: a bad one is 0 rather than a lost element.
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    try:
        return max(int(float(value)), 0) if value and len(value) <= 32 else 0
    except (ValueError, OverflowError):
        return 0


def _src(el: Element) -> str:
    return _attr(el, "src", "url")


def _inline_data(src: str) -> str | None:
    """The base64 payload of a `data:…;base64,` or `base64://` source, or None for a real URL."""
    if src.startswith("base64://"):
        return src[len("base64://") :]
    if src.startswith("data:"):
        head, comma, payload = src.partition(",")
        if comma and head.endswith(";base64"):
            return payload
    return None


def _ends_line(out: _Out) -> bool:
    return not out or (isinstance(out[-1], Text) and out[-1].text.endswith("\n"))


def _raw(el: Element) -> Raw:
    return Raw(PROTOCOL, el.type, dict(el.attrs))


def _dec_text(el: Element, depth: int, out: _Out) -> None:
    out.append(Text(el.attrs.get("content", "")))


def _dec_at(el: Element, depth: int, out: _Out) -> None:
    kind = el.attrs.get("type", "")
    at_id = el.attrs.get("id", "")
    if kind == "all":
        out.append(AtAll())
    elif at_id and not kind:
        out.append(At(at_id, el.attrs.get("name", "")))
    else:
        out.append(_raw(el))  # `type="here"` and role mentions have no model type


def _dec_image(el: Element, depth: int, out: _Out) -> None:
    src = _src(el)
    if not src:
        out.append(_raw(el))
        return
    data = _inline_data(src)
    out.append(
        Image(
            url=src if data is None else "",
            base64=data or "",
            width=_int(_attr(el, "width")),
            height=_int(_attr(el, "height")),
            # LLOneBot passes NTQQ's picSubType on; 1 is a sticker (表情包).
            emoji=_attr(el, "sub-type", "subType", "sub_type") == "1",
        )
    )


def _dec_audio(el: Element, depth: int, out: _Out) -> None:
    src = _src(el)
    if not src:
        out.append(_raw(el))
        return
    data = _inline_data(src)
    out.append(Voice(url=src if data is None else "", base64=data or "", length=_int(_attr(el, "duration"))))


def _dec_video(el: Element, depth: int, out: _Out) -> None:
    src = _src(el)
    if not src:
        out.append(_raw(el))
        return
    out.append(Video(url=src, thumbnail_url=_attr(el, "poster")))


def _dec_file(el: Element, depth: int, out: _Out) -> None:
    src = _src(el)
    if not src:
        out.append(_raw(el))
        return
    out.append(File(url=src, name=_attr(el, "title", "name"), size=_int(_attr(el, "size"))))


def _split_author(el: Element) -> tuple[Element | None, list[Element]]:
    author: Element | None = None
    rest: list[Element] = []
    for child in el.children:
        if child.type in _AUTHORS:
            author = author or child
        else:
            rest.append(child)
    return author, rest


def _decode_list(elements: list[Element] | tuple[Element, ...], depth: int) -> Message:
    out: _Out = []
    _decode_into(elements, depth, out)
    return _merge_text(out)


def _dec_quote(el: Element, depth: int, out: _Out) -> None:
    quote_id = el.attrs.get("id", "")
    author, rest = _split_author(el)
    if not quote_id and not rest:
        out.append(_raw(el))  # a quote of nothing cannot be fetched or replied to
        return
    # Chronocat writes `<quote chronocat:seq="…">` with no id: its content is still the reply's context.
    sender = author.attrs.get("id", "") if author is not None else ""
    out.append(Quote(quote_id, sender_id=sender, origin=_decode_list(rest, depth + 1)))


def _node(el: Element, depth: int) -> ForwardNode:
    author, rest = _split_author(el)
    message_id = el.attrs.get("id", "")
    message = _decode_list(rest, depth + 1)
    if author is None:
        return ForwardNode(message=message, message_id=message_id)
    return ForwardNode(
        sender_id=author.attrs.get("id", ""),
        sender_name=_attr(author, "name", "nick"),
        message=message,
        message_id=message_id,
    )


def _dec_message(el: Element, depth: int, out: _Out) -> None:
    if el.attrs.get("forward", "").lower() in _FALSE:
        # A plain <message> only marks where the sender splits messages; its content is what counts here.
        _decode_into(_split_author(el)[1], depth + 1, out)
        return
    message_id = el.attrs.get("id", "")
    if not el.children:
        # `<message id forward/>` forwards one existing message by reference.
        out.append(Forward(nodes=(ForwardNode(message_id=message_id),)) if message_id else _raw(el))
        return
    nodes: list[ForwardNode] = []
    loose: list[Element] = []  # content sitting directly in the forward, kept as a node of its own

    def flush_loose() -> None:
        if loose:
            message = _decode_list(loose, depth + 1)
            if message:
                nodes.append(ForwardNode(message=message))
            loose.clear()

    for child in el.children:
        if child.type == "message" and child.attrs.get("forward", "").lower() in _FALSE:
            flush_loose()
            nodes.append(_node(child, depth + 1))
        elif not (child.type == "text" and not child.attrs.get("content", "").strip()):
            loose.append(child)
    flush_loose()
    out.append(Forward(nodes=tuple(nodes), id=message_id))


def _dec_face(el: Element, depth: int, out: _Out) -> None:
    face_id = el.attrs.get("id", "")
    if not face_id:
        out.append(_raw(el))
        return
    # NTQQ face type 3 is a super (large, animated) face; LLOneBot passes the type on.
    out.append(Face(face_id, el.attrs.get("name", ""), big=el.attrs.get("type") == "3"))


def _dec_mface(el: Element, depth: int, out: _Out) -> None:
    url = _src(el)
    if not url:
        # LLOneBot puts the sticker's picture in as an <img> child.
        url = next((_src(child) for child in el.children if child.type in ("img", "image") and _src(child)), "")
    face = MarketFace(id=_attr(el, "emoji-id", "emojiId", "emoji_id", "id"), name=_attr(el, "summary", "name"), url=url)
    out.append(face if face.id or face.name or face.url else _raw(el))


def _dec_ark(el: Element, depth: int, out: _Out) -> None:
    data = el.attrs.get("data", "")
    out.append(Card("json", data) if data else _raw(el))


def _dec_transparent(el: Element, depth: int, out: _Out) -> None:
    _decode_into(el.children, depth + 1, out)


def _dec_p(el: Element, depth: int, out: _Out) -> None:
    # As LLOneBot renders it: a paragraph starts and ends on a line of its own.
    if not _ends_line(out):
        out.append(Text("\n"))
    _decode_into(el.children, depth + 1, out)
    if not out or not _ends_line(out):
        out.append(Text("\n"))


def _dec_sharp(el: Element, depth: int, out: _Out) -> None:
    out.append(Text(_attr(el, "name", "id")))


def _dec_link(el: Element, depth: int, out: _Out) -> None:
    href = el.attrs.get("href", "")
    label = _decode_list(el.children, depth + 1)
    out.extend(label)
    # The address is what a reader (or the model) needs; said once, after its label (LLOneBot does the same).
    if href and not (len(label) == 1 and isinstance(label[0], Text) and label[0].text == href):
        out.append(Text(f" ({href})" if label else href))


_DECODERS: dict[str, Callable[[Element, int, _Out], None]] = {
    "text": _dec_text,
    "at": _dec_at,
    "img": _dec_image,
    "image": _dec_image,
    "audio": _dec_audio,
    "video": _dec_video,
    "file": _dec_file,
    "quote": _dec_quote,
    "message": _dec_message,
    "face": _dec_face,
    "emoji": _dec_face,  # the generic platform emoji; on QQ that is a face
    "mface": _dec_mface,
    "llonebot:ark": _dec_ark,
    "p": _dec_p,
    "br": lambda el, depth, out: out.append(Text("\n")),
    "sharp": _dec_sharp,
    "a": _dec_link,
    **dict.fromkeys(_TRANSPARENT, _dec_transparent),
}


def _dec_unknown(el: Element, depth: int, out: _Out) -> None:
    # Kept as Raw so it can be sent back; its content still follows, so no text the user wrote is lost.
    out.append(_raw(el))
    _decode_into(el.children, depth + 1, out)


def _plain_text(elements: list[Element] | tuple[Element, ...]) -> str:
    """Every text node under `elements`, in order, found without recursion."""
    parts: list[str] = []
    pending = list(reversed(elements))
    while pending:
        el = pending.pop()
        if el.type == "text":
            parts.append(el.attrs.get("content", ""))
        else:
            pending.extend(reversed(el.children))
    return "".join(parts)


def _decode_into(elements: list[Element] | tuple[Element, ...], depth: int, out: _Out) -> None:
    if depth > _MAX_DEPTH:
        # Too deep to decode further: what the user wrote is still kept, as text.
        out.append(Text(_plain_text(elements)))
        return
    for el in elements:
        decoder = _DECODERS.get(el.type, _dec_unknown)
        decoder(el, depth, out)


def _merge_text(segments: _Out) -> Message:
    """Adjacent text pieces (split by formatting, <br/> or rollback) as one Text; empty text dropped."""
    out: _Out = []
    for seg in segments:
        if isinstance(seg, Text):
            if not seg.text:
                continue
            if out and isinstance(out[-1], Text):
                out[-1] = Text(out[-1].text + seg.text)
                continue
        out.append(seg)
    return tuple(out)


def decode_content(content: str) -> Message:
    """Decode Satori content into the model; never raises, elements the model has no type for become Raw("satori")."""
    return _decode_list(parse_content(content), 0)


def strip_leading_quote(message: Message) -> tuple[Quote | None, Message]:
    """The quote a message opens with (its reply context) and the message without it.

    Incoming content starts with `<quote>` when the user replied to something; whitespace-only text before it
    does not count as content, and is kept in the rest.
    """
    for index, seg in enumerate(message):
        if isinstance(seg, Text) and not seg.text.strip():
            continue
        if isinstance(seg, Quote):
            return seg, message[:index] + message[index + 1 :]
        break
    return None, message


# --- encoding ------------------------------------------------------------------------------------

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_:.-]*")
_ATTR_NAME = re.compile(r"[^\s=/\"'<>&]+")

# Magic prefixes of base64 payloads, for the MIME type of a data: URI (LLOneBot writes the bytes to a file
# and sniffs them itself, so a wrong guess costs nothing, but a right one helps stricter implementations).
_IMAGE_MIME = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
    ("Qk", "image/bmp"),
)
_AUDIO_MIME = (
    ("IyFTSUxL", "audio/silk"),
    ("AiMhU0lMS", "audio/silk"),  # Tencent's silk has a 0x02 byte before "#!SILK" (its 9th character is shared)
    ("IyFBTVI", "audio/amr"),
    ("SUQz", "audio/mpeg"),
    ("T2dnUw", "audio/ogg"),
    ("UklGR", "audio/wav"),
)


def _attr_text(attrs: dict[str, str]) -> str:
    return "".join(f' {key}="{_escape(value, attr=True)}"' for key, value in attrs.items())


def _element(tag: str, **attrs: str) -> str:
    return f"<{tag}{_attr_text({key: value for key, value in attrs.items() if value})}/>"


# Leading indentation is written as character references: a server trims raw whitespace around line breaks
# (satori-python strips indentation), but an entity is not whitespace to a trimmer, and Koishi / LLBot /
# Chronocat (@satorijs/element) decode `&#32;` back to exactly a space.
_INDENT_ENTITY = {" ": "&#32;", "\t": "&#9;"}


def _indent(line: str) -> tuple[str, str]:
    """A line's leading spaces/tabs as entities, and the rest of the line."""
    body = line.lstrip(" \t")
    head = line[: len(line) - len(body)]
    return "".join(_INDENT_ENTITY[char] for char in head), body


def _enc_text(text: str) -> str:
    """Escaped text whose line structure survives every server.

    A single line break between two unindented lines is sent as it is (every server keeps it). A line break
    next to a blank line or before an indented line is `<br/>`: satori-python collapses blank lines and
    receivers drop a whitespace run holding a newline at an element boundary (see `_trim`), while `<br/>` is
    the spec's line break and survives everywhere. Indentation is sent as entities (see `_INDENT_ENTITY`).
    """
    if not text:
        return ""
    lines = text.replace("\r\n", "\n").split("\n")
    blank = [not line.strip(" \t") for line in lines]
    out: list[str] = []
    for index, line in enumerate(lines):
        if index:
            keep = not (blank[index - 1] or blank[index] or line[:1] in (" ", "\t"))
            out.append("\n" if keep else "<br/>")
        head, body = _indent(line) if index or len(lines) > 1 else ("", line)
        out.append(head + _escape(body))
    return "".join(out)


def _data_uri(data: str, table: tuple[tuple[str, str], ...], default: str) -> str:
    if data.startswith("data:"):
        return data
    if data.startswith("base64://"):
        data = data[len("base64://") :]
    mime = next((mime for prefix, mime in table if data.startswith(prefix)), default)
    return f"data:{mime};base64,{data}"


def _enc_image(seg: Image, depth: int) -> str:
    # The implementation downloads the source itself (http(s), file:// on its own host, or inline data).
    src = seg.url or (_file_uri(seg.path) if seg.path else "")
    if not src and seg.base64:
        src = _data_uri(seg.base64, _IMAGE_MIME, "image/png")
    return _element("img", src=src) if src else ""


def _enc_voice(seg: Voice, depth: int) -> str:
    src = seg.url or (_file_uri(seg.path) if seg.path else "")
    if not src and seg.base64:
        src = _data_uri(seg.base64, _AUDIO_MIME, "application/octet-stream")
    return _element("audio", src=src) if src else ""


def _enc_video(seg: Video, depth: int) -> str:
    src = seg.url or (_file_uri(seg.path) if seg.path else "")
    return _element("video", src=src, poster=seg.thumbnail_url) if src else ""


def _enc_file(seg: File, depth: int) -> str:
    # Only a URL can be sent: a file id belongs to whichever platform issued it.
    return _element("file", src=seg.url, title=seg.name) if seg.url else ""


def _enc_at(seg: At, depth: int) -> str:
    # The name is what NTQQ shows after the "@"; other protocols keep the "@" in it.
    return _element("at", id=seg.target, name=seg.display.removeprefix("@")) if seg.target else ""


def _enc_face(seg: Face, depth: int) -> str:
    if seg.id.isascii() and seg.id.isdigit():
        # Without a type LLOneBot works the face type out from the id; a big face says so.
        return _element("face", id=seg.id, type="3" if seg.big else "")
    # A name-only face (from another protocol) cannot be sent, so it is said in words.
    return _escape(f"[表情:{seg.name}]" if seg.name else "[表情]")


def _enc_forward(seg: Forward, depth: int) -> str:
    placeholder = "[聊天记录]"
    if not seg.nodes or depth >= _MAX_DEPTH:
        return placeholder  # a forward known only by another platform's id can only be named
    nodes: list[str] = []
    for node in seg.nodes:
        if not node.message and node.message_id:
            nodes.append(_element("message", id=node.message_id))
            continue
        body = _encode(node.message, depth + 1)
        if not body:
            continue  # an empty node makes implementations fail the whole forward
        has_author = node.sender_id or node.sender_name
        author = _element("author", id=node.sender_id, name=node.sender_name) if has_author else ""
        nodes.append(f"<message>{author}{body}</message>")
    return f"<message forward>{''.join(nodes)}</message>" if nodes else placeholder


def _enc_card(seg: Card, depth: int) -> str:
    # An app (ark) card is JSON too; XML cards have no Satori element and are skipped.
    return _element("llonebot:ark", data=seg.content) if seg.kind in ("json", "app") and seg.content else ""


def _raw_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None  # nested structures have no attribute form


def _enc_raw(seg: Raw, depth: int) -> str:
    # Only our own protocol's elements mean anything to a Satori implementation.
    if seg.protocol != PROTOCOL or not _TAG_NAME.fullmatch(seg.type) or seg.type == "text":
        return ""
    attrs: dict[str, str] = {}
    data = seg.data if isinstance(seg.data, Mapping) else {}
    for key, value in data.items():
        text = _raw_value(value)
        if isinstance(key, str) and _ATTR_NAME.fullmatch(key) and text is not None:
            attrs[key] = text
    return f"<{seg.type}{_attr_text(attrs)}/>"


_ENCODERS: dict[type, Callable[[Any, int], str]] = {
    Text: lambda seg, depth: _enc_text(seg.text),
    At: _enc_at,
    AtAll: lambda seg, depth: '<at type="all"/>',
    Face: _enc_face,
    Image: _enc_image,
    Voice: _enc_voice,
    Video: _enc_video,
    File: _enc_file,
    Forward: _enc_forward,
    Card: _enc_card,
    # Store stickers need a key and package id the model does not keep, so say what it was instead.
    MarketFace: lambda seg, depth: _escape(seg.name or "[表情]"),
    Markdown: lambda seg, depth: _enc_text(seg.content),
    Raw: _enc_raw,
    # Poke, Dice, Rps and Music have no Satori element: skipped. Quote is placed first by `_encode`.
}


def _encode(message: Message, depth: int) -> str:
    quote = ""
    parts: list[str] = []
    # A forward is a message of its own: real encoders (LLBot, satori-python's OneBot adapter) send a quote in
    # front of it as a separate, empty reply first, so a forward goes without one.
    forwards = any(isinstance(seg, Forward) for seg in message)
    for seg in message:
        if isinstance(seg, Quote):
            # Satori wants the quote before the content, and a message replies to one message only.
            if not quote and seg.message_id and not forwards:
                quote = _element("quote", id=seg.message_id)
            continue
        encoder = _ENCODERS.get(type(seg))
        if encoder is not None:
            parts.append(encoder(seg, depth))
    return quote + "".join(parts)


def encode_content(message: Message) -> str:
    """The content string for sending `message`: a quote goes first (none before a forward), segments Satori
    cannot carry are dropped."""
    return _encode(message, 0)
