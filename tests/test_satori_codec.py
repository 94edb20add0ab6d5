"""Satori content: the tolerant element parser, decoding into the model and encoding back."""

from __future__ import annotations

import random
import time

import pytest

from adapters.satori.codec import Element, decode_content, encode_content, parse_content, strip_leading_quote
from core.message import (
    At,
    AtAll,
    Card,
    Dice,
    Face,
    File,
    Forward,
    ForwardNode,
    Image,
    Markdown,
    MarketFace,
    Message,
    Music,
    Poke,
    Quote,
    Raw,
    Text,
    Video,
    Voice,
)


def text(content: str) -> Element:
    return Element("text", {"content": content})


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a &amp; b", "a & b"),
        ("&lt;at id=&quot;1&quot;/&gt;", '<at id="1"/>'),
        ("it&#39;s it&#x27;s it&#X27;s", "it's it's it's"),
        ("&#128512; &#x1F600;", "😀 😀"),
        ("&amp;lt;", "&lt;"),  # unescaped once, not twice
        ("&apos;", "'"),
        ("&nbsp; &unknown; & alone", "&nbsp; &unknown; & alone"),  # unknown entities stay as written
        ("&#0; &#xD800; &#99999999;", "&#0; &#xD800; &#99999999;"),  # not characters
    ],
)
def test_text_escapes(source: str, expected: str) -> None:
    assert parse_content(source) == [text(expected)]


def test_attribute_forms() -> None:
    [el] = parse_content("""<x a="1" b='two words' c d=bare e="&lt;&amp;&quot;" f='"' g = "spaced"/>""")
    assert el == Element(
        "x", {"a": "1", "b": "two words", "c": "true", "d": "bare", "e": '<&"', "f": '"', "g": "spaced"}
    )


def test_self_closing_and_nested() -> None:
    assert parse_content('<img src="u"/><br/><br />') == [
        Element("img", {"src": "u"}),
        Element("br"),
        Element("br"),
    ]
    assert parse_content("<b>x<i>y</i>z</b>") == [
        Element("b", {}, (text("x"), Element("i", {}, (text("y"),)), text("z")))
    ]


def test_tag_names_are_case_insensitive_and_may_have_a_prefix() -> None:
    assert parse_content('<B>x</b><llonebot:ark data="{}"/>') == [
        Element("b", {}, (text("x"),)),
        Element("llonebot:ark", {"data": "{}"}),
    ]


def test_unmatched_tags_are_text() -> None:
    assert parse_content("a<b>c") == [text("a<b>c")]
    assert parse_content("a</b>c") == [text("a</b>c")]
    # an unclosed open inside a closed element: its source is text, its children stay in the parent
    assert parse_content("<i>x<b>y</i>") == [Element("i", {}, (text("x<b>y"),))]
    assert parse_content('<i>1<at id="2"/><b>3</i>4') == [
        Element("i", {}, (text("1"), Element("at", {"id": "2"}), text("<b>3"))),
        text("4"),
    ]


def test_things_that_are_not_tags_are_text() -> None:
    for source in ("1 < 2 > 0", "a <3 b", "<>", "< b>", "<1a>", "x<", "<a", "</>", "<b!>"):
        assert parse_content(source) == [text(source)], source


def test_comments_are_dropped() -> None:
    assert parse_content("a<!-- <b>hidden</b> -->b") == [text("ab")]
    assert parse_content("<!---->x") == [text("x")]
    assert parse_content("x<!-- never closed") == [text("x<!-- never closed")]


def test_whitespace_with_a_newline_at_a_boundary_is_trimmed() -> None:
    source = """
        <p>
          first line
          second line
        </p>
        <at id="1"/> hi
    """
    assert parse_content(source) == [
        Element("p", {}, (text("first line\n          second line"),)),
        Element("at", {"id": "1"}),
        text(" hi"),
    ]


def test_whitespace_without_a_newline_is_kept() -> None:
    assert parse_content(' a <at id="1"/> <at id="2"/> b ') == [
        text(" a "),
        Element("at", {"id": "1"}),
        text(" "),
        Element("at", {"id": "2"}),
        text(" b "),
    ]
    assert parse_content("line1\nline2\n\nline4") == [text("line1\nline2\n\nline4")]


def test_escaped_whitespace_survives_trimming() -> None:
    assert parse_content("a&#10;<br/>") == [text("a\n"), Element("br")]


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "<",
        ">",
        "</",
        "<<<>>>",
        "<a b='>",
        '<a b="c>d">',
        "<a =x>",
        "&#;&#x;&;&",
        "<message forward><message>",
        "</message></message>",
        "<quote>",
        "<at/>",
        "<img/>",
        "<p/><p></p></p>",
        "\x00\ud800<b>\x00</b>",
        "<" * 5000 + ">" * 5000,
        "<b>" * 5000,
        "<b>" * 5000 + "</b>" * 5000,
        "</b>" * 5000,
        "<a " * 5000,
        "<!--" * 5000,
        "<a '" * 5000 + ">",
        " " * 100_000 + "x",
    ],
)
def test_garbage_never_raises(garbage: str) -> None:
    parse_content(garbage)
    message = decode_content(garbage)
    encode_content(message)


def test_random_garbage_never_raises() -> None:
    rng = random.Random(7)
    alphabet = ["<", ">", "/", '"', "'", "=", "&", "#", ";", "!", "-", " ", "\n", "a", "b", "at", "quote", "message"]
    for _ in range(300):
        source = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        encode_content(decode_content(source))


def test_non_string_content_is_empty() -> None:
    assert parse_content(None) == []  # type: ignore[arg-type]
    assert decode_content(123) == ()  # type: ignore[arg-type]


def test_large_inputs_stay_fast() -> None:
    started = time.perf_counter()
    sources = [
        "<a " * 30_000 + ">",
        "<!--" * 30_000,
        "</b>x" * 30_000,
        "a\n" * 30_000,
        "<b>" * 30_000,
        "<b>" * 150 + "</i>" * 30_000,
        "<b><i>" * 100 + "</b>" * 30_000,
    ]
    for source in sources:  # each would take minutes if anything were quadratic
        decode_content(source)
    assert time.perf_counter() - started < 5


def test_deep_nesting_is_bounded() -> None:
    # Past the nesting limit an open tag is text; past the decoding depth content is kept as plain text.
    source = "<b>" * 1000 + "deep" + "</b>" * 1000
    repr(parse_content(source))  # no recursion error
    assert decode_content(source) == (Text("<b>" * 800 + "deep" + "</b>" * 800),)
    quotes = '<quote id="1">' * 30 + "q" + "</quote>" * 30
    message = decode_content(quotes)
    for _ in range(17):
        [quote] = message
        assert isinstance(quote, Quote)
        message = quote.origin
    assert message == (Text("q"),)


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("hello", (Text("hello"),)),
        ('<at id="123" name="Alice"/>', (At("123", "Alice"),)),
        ('<at id="123"/>', (At("123"),)),
        ('<at type="all"/>', (AtAll(),)),
        ('<img src="https://x/1.png" width="10" height="20"/>', (Image(url="https://x/1.png", width=10, height=20),)),
        ('<image url="https://x/2.png"/>', (Image(url="https://x/2.png"),)),
        ('<img src="https://x/3.png" sub-type="1"/>', (Image(url="https://x/3.png", emoji=True),)),
        ('<img src="data:image/png;base64,iVBORw0KGgo="/>', (Image(base64="iVBORw0KGgo="),)),
        ('<audio src="file:///tmp/a.silk" duration="3"/>', (Voice(url="file:///tmp/a.silk", length=3),)),
        (
            '<video src="https://x/v.mp4" poster="https://x/p.jpg"/>',
            (Video(url="https://x/v.mp4", thumbnail_url="https://x/p.jpg"),),
        ),
        ('<file src="https://x/f" title="a.txt"/>', (File(url="https://x/f", name="a.txt"),)),
        ('<face id="14" type="1" platform="llonebot"/>', (Face("14"),)),
        ('<face id="339" name="舔屏" type="3"/>', (Face("339", "舔屏", big=True),)),
        ('<emoji id="5" name="smile"/>', (Face("5", "smile"),)),
        ('<llonebot:ark data="{&quot;app&quot;:1}"/>', (Card("json", '{"app":1}'),)),
        ("<b>bo</b><strong>ld</strong> <i>i</i><em>t</em><u>u</u><ins>n</ins>", (Text("bold itun"),)),
        ("<s>s</s><del>d</del><spl>p</spl><code>c</code><sup>2</sup><sub>3</sub>", (Text("sdpc23"),)),
        ("a<br/>b", (Text("a\nb"),)),
        ("a<p>b</p>c", (Text("a\nb\nc"),)),
        ("<p>one</p><p>two</p>", (Text("one\ntwo\n"),)),
        ('<sharp id="42" name="general"/>', (Text("general"),)),
        ('<sharp id="42"/>', (Text("42"),)),
        ('<a href="https://x.y"/>', (Text("https://x.y"),)),
        ('<a href="https://x.y">site</a>', (Text("site (https://x.y)"),)),
        ('<a href="https://x.y">https://x.y</a>', (Text("https://x.y"),)),
        (
            '<button id="b1" type="action">Go</button>',
            (Raw("satori", "button", {"id": "b1", "type": "action"}), Text("Go")),
        ),
        ('<at type="here"/>', (Raw("satori", "at", {"type": "here"}),)),
        ("<img/>", (Raw("satori", "img", {}),)),
        ("<face/>", (Raw("satori", "face", {}),)),
        ("<llonebot:ark/>", (Raw("satori", "llonebot:ark", {}),)),
    ],
)
def test_decode_elements(content: str, expected: Message) -> None:
    assert decode_content(content) == expected


def test_decode_market_face() -> None:
    content = (
        '<mface emoji-package-id="1" emoji-id="abc" key="k" summary="[开心]">'
        '<img src="https://gxh.vip.qq.com/raw300.gif"/></mface>'
    )
    assert decode_content(content) == (MarketFace("abc", "[开心]", "https://gxh.vip.qq.com/raw300.gif"),)
    assert decode_content('<mface id="9" name="x" url="u"/>') == (MarketFace("9", "x", "u"),)


def test_decode_quote_with_author() -> None:
    content = '<quote id="m1"><author id="42" name="Bob"/>original <at id="7"/></quote>reply'
    assert decode_content(content) == (
        Quote("m1", sender_id="42", origin=(Text("original "), At("7"))),
        Text("reply"),
    )


def test_decode_quote_as_llonebot_sends_it() -> None:
    # LLOneBot puts the quoted elements in without an author; some implementations use <user>.
    assert decode_content('<quote id="m2">old</quote>new') == (Quote("m2", origin=(Text("old"),)), Text("new"))
    assert decode_content('<quote id="m3"><user id="5"/></quote>x') == (Quote("m3", sender_id="5"), Text("x"))
    assert decode_content('<quote id="m4"/>x') == (Quote("m4"), Text("x"))


def test_decode_forward() -> None:
    content = (
        "<message forward>"
        '<message><author id="1" name="Ann"/>hi <img src="https://x/i.png"/></message>'
        '<message><author id="2" name="Ben"/>yo</message>'
        '<message id="m9"/>'
        "</message>"
    )
    assert decode_content(content) == (
        Forward(
            nodes=(
                ForwardNode(sender_id="1", sender_name="Ann", message=(Text("hi "), Image(url="https://x/i.png"))),
                ForwardNode(sender_id="2", sender_name="Ben", message=(Text("yo"),)),
                ForwardNode(message_id="m9"),
            )
        ),
    )


def test_decode_forward_by_reference_and_plain_message() -> None:
    assert decode_content('<message id="m5" forward/>') == (Forward(nodes=(ForwardNode(message_id="m5"),)),)
    # a plain <message> only splits what is sent; received, it is its content
    assert decode_content("<message>a</message><message>b</message>") == (Text("ab"),)


def test_decode_nested_forward() -> None:
    content = (
        "<message forward><message><author id='1'/><message forward><message>in</message></message></message></message>"
    )
    inner = Forward(nodes=(ForwardNode(message=(Text("in"),)),))
    assert decode_content(content) == (Forward(nodes=(ForwardNode(sender_id="1", message=(inner,)),)),)


def test_decode_keeps_text_around_elements() -> None:
    content = 'hi <at id="1" name="A"/>, see <img src="u"/>\nok &amp; bye'
    # the newline right after the image is a boundary run, which Satori drops
    assert decode_content(content) == (Text("hi "), At("1", "A"), Text(", see "), Image(url="u"), Text("ok & bye"))


def test_strip_leading_quote() -> None:
    message = decode_content('<quote id="q"><author id="9"/>old</quote> new')
    quote, rest = strip_leading_quote(message)
    assert quote == Quote("q", sender_id="9", origin=(Text("old"),))
    assert rest == (Text(" new"),)
    assert strip_leading_quote((Text("a"), Quote("q"))) == (None, (Text("a"), Quote("q")))
    assert strip_leading_quote((Text(" "), Quote("q"), Text("x"))) == (Quote("q"), (Text(" "), Text("x")))
    assert strip_leading_quote(()) == (None, ())


# --- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ((Text('a < b & "c" > d'),), 'a &lt; b &amp; "c" &gt; d'),
        ((At("123"),), '<at id="123"/>'),
        ((At("123", "@Alice"),), '<at id="123" name="Alice"/>'),
        ((AtAll(),), '<at type="all"/>'),
        ((Text("hi"), Quote("m1", origin=(Text("old"),))), '<quote id="m1"/>hi'),
        ((Quote("m1"), Quote("m2"), Text("x")), '<quote id="m1"/>x'),
        ((Image(url='https://x/a.png?a=1&b="2"'),), '<img src="https://x/a.png?a=1&amp;b=&quot;2&quot;"/>'),
        ((Image(base64="iVBORw0KGgoAAA"),), '<img src="data:image/png;base64,iVBORw0KGgoAAA"/>'),
        ((Image(base64="/9j/4AAQ"),), '<img src="data:image/jpeg;base64,/9j/4AAQ"/>'),
        ((Image(base64="base64://R0lGODlh"),), '<img src="data:image/gif;base64,R0lGODlh"/>'),
        ((Image(path="/tmp/pic.png"),), '<img src="file:///tmp/pic.png"/>'),
        ((Image(id="platform-only-id"),), ""),
        ((Voice(url="https://x/a.mp3"),), '<audio src="https://x/a.mp3"/>'),
        ((Voice(base64="IyFTSUxLX1YzAA"),), '<audio src="data:audio/silk;base64,IyFTSUxLX1YzAA"/>'),
        ((Video(url="https://x/v.mp4"),), '<video src="https://x/v.mp4"/>'),
        ((File(url="https://x/f", name="a.txt"),), '<file src="https://x/f" title="a.txt"/>'),
        ((File(id="only-an-id"),), ""),
        ((Face("14"),), '<face id="14"/>'),
        ((Face("339", big=True),), '<face id="339" type="3"/>'),
        ((Face("", "微笑"),), "[表情:微笑]"),
        ((Markdown("# T <b>"),), "# T &lt;b&gt;"),
        ((MarketFace("1", "[开心]"),), "[开心]"),
        ((MarketFace(),), "[表情]"),
        ((Card("json", '{"a":"<1>"}'),), '<llonebot:ark data="{&quot;a&quot;:&quot;&lt;1&gt;&quot;}"/>'),
        ((Card("xml", "<msg/>"),), ""),
        ((Dice(3), Poke(), Music(title="t"), Text("ok")), "ok"),
        ((Raw("satori", "button", {"id": "b", "text": 'a"b'}),), '<button id="b" text="a&quot;b"/>'),
        ((Raw("satori", "sharp", {"id": 5, "flag": True}),), '<sharp id="5" flag="true"/>'),
        ((Raw("onebot", "shake", {}),), ""),
        ((Raw("satori", "bad name", {}), Raw("satori", "x", {"bad key": "1", "ok": "2"})), '<x ok="2"/>'),
        ((Forward(id="resid"),), "[聊天记录]"),
        ((Text(""),), ""),
    ],
)
def test_encode_segments(message: Message, expected: str) -> None:
    assert encode_content(message) == expected


def test_encode_forward() -> None:
    forward = Forward(
        nodes=(
            ForwardNode(sender_id="1", sender_name="A&B", message=(Text("hi"), Image(url="u"))),
            ForwardNode(message=(Text("anon"),)),
            ForwardNode(message_id="m7"),
            ForwardNode(sender_id="3", message=()),  # empty: left out
        )
    )
    assert encode_content((forward,)) == (
        "<message forward>"
        '<message><author id="1" name="A&amp;B"/>hi<img src="u"/></message>'
        "<message>anon</message>"
        '<message id="m7"/>'
        "</message>"
    )


def test_encode_keeps_boundary_newlines_as_line_breaks() -> None:
    # A receiver trims a newline run next to an element; <br/> keeps the line break.
    assert encode_content((Text("line\n"), Image(url="u"), Text("\nnext"))) == 'line<br/><img src="u"/><br/>next'
    assert encode_content((Text("a\nb"),)) == "a\nb"
    # Spaces after the last line break are indentation: entities, so no trimmer drops them.
    assert encode_content((Text("a\r\n  "),)) == "a<br/>&#32;&#32;"
    assert encode_content((Text("  a  "),)) == "  a  "


# --- round trips ---------------------------------------------------------------------------------

ROUND_TRIP: list[Message] = [
    (Text("plain"),),
    (Text("a & b < c > d \"q\" 'p'"),),
    (Text("multi\nline\n\ntext"),),
    (Text("ends with newline\n"), Image(url="https://x/1.png"), Text("\n\nstarts after blank")),
    (Text("\n"),),
    (At("10001", "Alice"), Text(" hello")),
    (AtAll(), Text(" all")),
    (Quote("m1"), Text("reply")),
    (Image(url="https://x/a.png?x=1&y=2"),),
    (Image(base64="iVBORw0KGgo="),),
    (Voice(url="https://x/a.silk"),),
    (Video(url="https://x/v.mp4", thumbnail_url="https://x/p.jpg"),),
    (File(url="https://x/f.zip", name="f.zip"),),
    (Face("14"),),
    (Face("339", big=True),),
    (Card("json", '{"app":"com.tencent.x","meta":{"a":"<&>"}}'),),
    (Raw("satori", "button", {"id": "b1", "type": "action"}),),
    (
        Forward(
            nodes=(
                ForwardNode(sender_id="1", sender_name="A", message=(Text("hi "), At("2"))),
                ForwardNode(sender_id="2", sender_name="B", message=(Image(url="u"),)),
                ForwardNode(message_id="m7"),
            )
        ),
    ),
    (Text("text "), At("1"), Text(" "), Face("2"), Text(" "), Image(url="u"), Text(" end")),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_round_trip(message: Message) -> None:
    assert decode_content(encode_content(message)) == message


def test_round_trip_from_content() -> None:
    content = '<quote id="1"/><at id="2" name="n"/> hi &amp; <img src="u"/><face id="3"/>'
    assert encode_content(decode_content(content)) == content
