"""Built-in tools: current_time, web_fetch (SSRF-safe) and web_search, through real sockets on 127.0.0.1."""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ToolSettings
from tests.conftest import free_port
from tests.fakes.search_servers import FakeSearch, FakeSite
from tools.base import ToolError
from tools.builtin import builtin_tools
from tools.clock import CurrentTime
from tools.fetch import REFUSED, TRUNCATED, WebFetch, html_to_text, is_public_address, parse_url, vet_host
from tools.search import WebSearch

KEY = "sk-test-secret-key-123"

# ---------------------------------------------------------------- current_time


def fixed(moment: datetime) -> Any:
    return lambda: moment


async def test_time_in_shanghai_crosses_midnight() -> None:
    tool = CurrentTime("Asia/Shanghai", clock=fixed(datetime(2026, 12, 3, 16, 30, 5, tzinfo=UTC)))
    text = await tool.call({})
    assert "2026年12月04日 星期五 00:30:05" in text
    assert "Friday, 2026-12-04 00:30:05" in text
    assert "UTC+08:00" in text and "Asia/Shanghai" in text
    assert "2026-12-04T00:30:05+08:00" in text
    assert tool.spec.name == "current_time" and tool.spec.progress == ""


async def test_time_in_utc_and_naive_clock() -> None:
    tool = CurrentTime("UTC", clock=fixed(datetime(2024, 2, 29, 23, 59, 59)))  # naive: taken as UTC
    text = await tool.call({})
    assert "2024年02月29日 星期四 23:59:59" in text and "Thursday" in text and "UTC+00:00" in text


async def test_time_negative_offset() -> None:
    tool = CurrentTime("America/St_Johns", clock=fixed(datetime(2026, 1, 1, 12, 0, tzinfo=UTC)))
    assert "UTC-03:30" in await tool.call({})


def test_unknown_zone_is_a_tool_error() -> None:
    with pytest.raises(ToolError):
        CurrentTime("Mars/Olympus")


# ---------------------------------------------------------------- web_fetch

ALLOW_ALL = lambda ip: True  # noqa: E731 - the test-only override of the address policy

PAGE = b"""<!doctype html><html><head><title>  Hello
  Page </title><style>body{color:red}</style><script>var secret = 1;</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Main   heading</h1><p>First   paragraph with <a href="/x">a link</a>.</p>
<ul><li>one</li><li>two &amp; three</li></ul><noscript>enable js</noscript>
<h2>Sub</h2><div>Last<br>line</div></body></html>"""


@pytest.fixture
async def site() -> AsyncIterator[FakeSite]:
    server = FakeSite()
    await server.start()
    server.pages["/page"] = (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE)
    yield server
    await server.stop()


def fetcher(**overrides: Any) -> WebFetch:
    options: dict[str, Any] = {"max_bytes": 100_000, "max_chars": 5000, "timeout": 5.0, "allowed": ALLOW_ALL}
    options.update(overrides)
    return WebFetch(**options)


def resolver_of(mapping: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise OSError("no such name")
        return mapping[host]

    return resolve


async def test_fetch_reads_a_page_as_text(site: FakeSite) -> None:
    text = await fetcher().call({"url": site.base_url + "/page"})
    assert text.splitlines()[0] == "标题：Hello Page"
    body = text.split("\n\n", 1)[1]
    assert body.splitlines() == [
        "# Main heading",
        "First paragraph with a link.",
        "- one",
        "- two & three",
        "## Sub",
        "Last",
        "line",
    ]
    for dropped in ("Home", "About", "secret", "color", "enable js"):
        assert dropped not in text


def test_html_to_text_survives_broken_markup() -> None:
    title, text = html_to_text("<title>t</title><p>a<nav>x<p>b</div></nav>c<script>d</p><![CDATA[ e")
    assert title == "t" and "a" in text and "x" not in text


async def test_fetch_plain_text_and_json(site: FakeSite) -> None:
    site.pages["/t.txt"] = (200, {"Content-Type": "text/plain"}, "纯文本 内容".encode())
    site.pages["/d.json"] = (200, {"Content-Type": "application/json"}, b'{"a": 1}')
    site.pages["/feed"] = (200, {"Content-Type": "application/rss+xml"}, b"<rss>x</rss>")
    assert await fetcher().call({"url": site.base_url + "/t.txt"}) == "纯文本 内容"
    assert await fetcher().call({"url": site.base_url + "/d.json"}) == '{"a": 1}'
    assert await fetcher().call({"url": site.base_url + "/feed"}) == "<rss>x</rss>"


async def test_fetch_decodes_the_declared_charset(site: FakeSite) -> None:
    html = '<html><head><meta charset="gbk"><title>中文标题</title></head><body><p>你好</p></body></html>'
    site.pages["/gbk"] = (200, {"Content-Type": "text/html"}, html.encode("gbk"))
    text = await fetcher().call({"url": site.base_url + "/gbk"})
    assert "中文标题" in text and "你好" in text


async def test_fetch_caps_the_bytes_read(site: FakeSite) -> None:
    site.pages["/big.txt"] = (200, {"Content-Type": "text/plain"}, b"a" * 50_000)
    text = await fetcher(max_bytes=4096).call({"url": site.base_url + "/big.txt"})
    assert text == "a" * 4096 + TRUNCATED


async def test_fetch_stops_a_chunked_stream_at_the_cap(site: FakeSite) -> None:
    site.streams["/endless"] = ("text/plain", b"b" * 65536, 2000)  # 128 MiB if read to the end
    text = await fetcher(max_bytes=10_000, max_chars=50_000).call({"url": site.base_url + "/endless"})
    assert text == "b" * 10_000 + TRUNCATED
    assert site.streamed["/endless"] < 2000 * 65536


async def test_fetch_caps_a_decompressed_body(site: FakeSite) -> None:
    bomb = gzip.compress(b"z" * 20_000_000)  # ~20 KB on the wire, 20 MB unpacked
    site.pages["/bomb"] = (200, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}, bomb)
    text = await fetcher(max_bytes=8192, max_chars=50_000).call({"url": site.base_url + "/bomb"})
    assert text == "z" * 8192 + TRUNCATED


async def test_fetch_caps_the_characters_returned(site: FakeSite) -> None:
    site.pages["/long.txt"] = (200, {"Content-Type": "text/plain"}, "字".encode() * 1000)
    text = await fetcher(max_chars=100).call({"url": site.base_url + "/long.txt"})
    assert text == "字" * 100 + TRUNCATED


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "application/pdf"])
async def test_fetch_refuses_other_content_types(site: FakeSite, content_type: str) -> None:
    site.pages["/file"] = (200, {"Content-Type": content_type}, b"\x89PNG....")
    with pytest.raises(ToolError, match="不支持的内容类型"):
        await fetcher().call({"url": site.base_url + "/file"})


async def test_fetch_reports_the_status(site: FakeSite) -> None:
    with pytest.raises(ToolError, match="HTTP 404"):
        await fetcher().call({"url": site.base_url + "/missing"})


async def test_fetch_follows_redirects_and_stops_loops(site: FakeSite) -> None:
    site.pages["/r1"] = (302, {"Location": "/r2"}, b"")
    site.pages["/r2"] = (301, {"Location": site.base_url + "/page"}, b"")
    assert "Hello Page" in await fetcher().call({"url": site.base_url + "/r1"})
    site.pages["/loop"] = (307, {"Location": "/loop"}, b"")
    with pytest.raises(ToolError, match="重定向次数过多"):
        await fetcher().call({"url": site.base_url + "/loop"})
    assert site.hits.count("/loop") == 6  # the first request and 5 redirects


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://internal.test/",  # resolves (injected) to a private address
        "http://127.0.0.2/",
    ],
)
async def test_fetch_refuses_a_redirect_to_a_private_address(site: FakeSite, location: str) -> None:
    site.pages["/go"] = (302, {"Location": location}, b"")
    only_the_site = lambda ip: ip == ipaddress.ip_address("127.0.0.1")  # noqa: E731
    tool = fetcher(allowed=only_the_site, resolver=resolver_of({"internal.test": ["192.168.1.5"]}))
    with pytest.raises(ToolError, match=REFUSED):
        await tool.call({"url": site.base_url + "/go"})
    assert site.hits == ["/go"]


async def test_fetch_refuses_a_redirect_to_another_scheme(site: FakeSite) -> None:
    site.pages["/file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    with pytest.raises(ToolError, match="只支持 http"):
        await fetcher().call({"url": site.base_url + "/file"})


async def test_fetch_connects_to_the_vetted_address_with_the_original_host(site: FakeSite) -> None:
    """`site.test` exists nowhere but in the injected resolver: the page can only come from the pinned address."""
    port = site.base_url.rsplit(":", 1)[1]
    calls: list[str] = []
    only_the_site = lambda ip: ip == ipaddress.ip_address("127.0.0.1")  # noqa: E731
    tool = fetcher(allowed=only_the_site, resolver=resolver_of({"site.test": ["127.0.0.1"]}, calls))
    assert "Hello Page" in await tool.call({"url": f"http://site.test:{port}/page"})
    assert calls == ["site.test"]
    assert site.host_headers == [f"site.test:{port}"]


async def test_fetch_times_out(site: FakeSite) -> None:
    site.hanging.add("/slow")
    with pytest.raises(ToolError, match="超时"):
        await fetcher(timeout=0.5).call({"url": site.base_url + "/slow"})


async def test_fetch_unreachable_port_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="无法读取网页"):
        await fetcher().call({"url": f"http://127.0.0.1:{free_port()}/"})


# -- without the override: refused before any connection


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "[::1]",
        "0.0.0.0",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:10.0.0.1]",
        "[64:ff9b::a00:1]",
        "[2002:a00:1::1]",
        "100.64.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "224.0.0.1",
        "[fd00::1]",
        "[fe80::1]",
        "255.255.255.255",
    ],
)
async def test_fetch_refuses_private_literal_addresses(site: FakeSite, host: str) -> None:
    port = site.base_url.rsplit(":", 1)[1]
    tool = WebFetch(max_bytes=10_000, max_chars=1000, timeout=5.0, resolver=resolver_of({}))
    with pytest.raises(ToolError, match=REFUSED):
        await tool.call({"url": f"http://{host}:{port}/page"})
    assert site.hits == []


@pytest.mark.parametrize(
    "addresses", [["10.1.2.3"], ["127.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["2606:4700::1111", "fe80::1"]]
)
async def test_fetch_refuses_a_name_resolving_to_a_private_address(site: FakeSite, addresses: list[str]) -> None:
    port = site.base_url.rsplit(":", 1)[1]
    tool = WebFetch(max_bytes=10_000, max_chars=1000, timeout=5.0, resolver=resolver_of({"evil.test": addresses}))
    with pytest.raises(ToolError, match=REFUSED):
        await tool.call({"url": f"http://evil.test:{port}/page"})
    assert site.hits == []


async def test_fetch_refuses_localhost_through_the_system_resolver(site: FakeSite) -> None:
    port = site.base_url.rsplit(":", 1)[1]
    tool = WebFetch(max_bytes=10_000, max_chars=1000, timeout=5.0)
    with pytest.raises(ToolError, match=REFUSED):
        await tool.call({"url": f"http://localhost:{port}/page"})
    assert site.hits == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", "只支持 http"),
        ("file:///etc/passwd", "只支持 http"),
        ("javascript:alert(1)", "只支持 http"),
        ("gopher://127.0.0.1:6379/_x", "只支持 http"),
        ("http://user:hunter2@example.com/", "用户名或密码"),
        ("http://user@example.com/", "用户名或密码"),
        ("http:///nohost", "主机名|格式"),
        ("http://example.com:99999/", "格式"),
    ],
)
async def test_fetch_refuses_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ToolError, match=message) as caught:
        await WebFetch(max_bytes=10_000, max_chars=1000, timeout=5.0, allowed=lambda ip: False).call({"url": url})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("arguments", [{}, {"url": ""}, {"url": 42}, {"url": None}])
async def test_fetch_needs_a_url(arguments: dict[str, Any]) -> None:
    with pytest.raises(ToolError, match="url"):
        await fetcher().call(arguments)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("2002:5db8:d822::1", True),  # 6to4 of a public address
        ("127.0.0.1", False),
        ("10.255.255.255", False),
        ("100.127.0.1", False),
        ("198.18.0.1", False),
        ("192.0.2.1", False),  # documentation
        ("::ffff:8.8.8.8", False),  # mapped addresses are refused whole (Python marks ::/8 reserved)
        ("ff02::1", False),
        ("fec0::1", False),
        ("2001::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    host=st.text(max_size=60),
    answers=st.lists(st.one_of(st.text(max_size=40), st.ip_addresses().map(str)), max_size=4),
)
async def test_vetting_arbitrary_hosts_raises_only_tool_errors(host: str, answers: list[str]) -> None:
    async def resolve(name: str, port: int) -> Sequence[str]:
        return answers

    try:
        addresses = await vet_host(host, 80, resolve, is_public_address)
    except ToolError:
        return
    assert addresses and all(is_public_address(ipaddress.ip_address(a)) for a in addresses)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=80), st.from_regex(r"\Ahttps?://[^/]{0,30}(/.{0,20})?\Z")))
async def test_fetch_of_arbitrary_urls_raises_only_tool_errors(text: str) -> None:
    """Every address refused: whatever the string, nothing is connected to and only ToolError comes out."""
    tool = WebFetch(max_bytes=1024, max_chars=100, timeout=2.0, allowed=lambda ip: False, resolver=resolve_all)
    with pytest.raises(ToolError):
        await tool.call({"url": text})


async def resolve_all(host: str, port: int) -> Sequence[str]:
    return ["203.0.113.9"]


@given(text=st.text(max_size=80))
def test_parse_url_raises_only_tool_errors(text: str) -> None:
    try:
        url = parse_url(text)
    except ToolError:
        return
    assert url.scheme in ("http", "https") and url.raw_host


# ---------------------------------------------------------------- web_search


@pytest.fixture
async def search_server() -> AsyncIterator[FakeSearch]:
    server = FakeSearch()
    await server.start()
    yield server
    await server.stop()


def searcher(provider: str, server: FakeSearch, **overrides: Any) -> WebSearch:
    options: dict[str, Any] = {"api_key": KEY, "search_url": server.base_url, "max_results": 5, "timeout": 5.0}
    options.update(overrides)
    return WebSearch(provider, **options)


EXPECTED_REQUEST = {
    # provider: (method, path, where the key goes)
    "searxng": ("GET", "/search", None),
    "tavily": ("POST", "/search", ("Authorization", f"Bearer {KEY}")),
    "bing": ("GET", "/v7.0/search", ("Ocp-Apim-Subscription-Key", KEY)),
    "bocha": ("POST", "/v1/web-search", ("Authorization", f"Bearer {KEY}")),
}


@pytest.mark.parametrize("provider", sorted(EXPECTED_REQUEST))
async def test_search_each_provider(search_server: FakeSearch, provider: str, log_lines: list[str]) -> None:
    tool = searcher(provider, search_server)
    text = await tool.call({"query": "  今天的新闻 ", "count": 3})
    blocks = text.split("\n\n")
    assert len(blocks) == 3
    snippet = "摘要 1 with spaces（完整摘要）" if provider == "bocha" else "摘要 1 with spaces"
    assert blocks[0] == f"1. 结果 1\nhttps://example.com/1\n{snippet}"
    assert blocks[2].startswith("3. 结果 3\n")

    method, path, key_header = EXPECTED_REQUEST[provider]
    (request,) = search_server.requests
    assert (request.method, request.path) == (method, path)
    if key_header is None:
        assert all(KEY not in value for value in request.headers.values())
    else:
        assert request.headers[key_header[0]] == key_header[1]
    if provider == "searxng":
        assert request.query == {"q": "今天的新闻", "format": "json"}
    elif provider == "tavily":
        assert request.body == {"query": "今天的新闻", "max_results": 3}
    elif provider == "bing":
        assert request.query["q"] == "今天的新闻" and request.query["count"] == "3"
    else:
        assert request.body == {"query": "今天的新闻", "count": 3, "summary": True}
    assert tool.spec.name == "web_search" and tool.spec.progress == "正在搜索…"
    assert not any(KEY in line for line in log_lines)


@pytest.mark.parametrize("provider", sorted(EXPECTED_REQUEST))
@pytest.mark.parametrize(("count", "expected"), [(50, 5), (None, 5), (0, 1), (-3, 1), ("2", 2), ("many", 5), (True, 5)])
async def test_search_count_is_capped(search_server: FakeSearch, provider: str, count: Any, expected: int) -> None:
    arguments = {"query": "q"} if count is None else {"query": "q", "count": count}
    text = await searcher(provider, search_server).call(arguments)
    assert len(text.split("\n\n")) == expected


@pytest.mark.parametrize("provider", sorted(EXPECTED_REQUEST))
@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
async def test_search_http_errors(search_server: FakeSearch, provider: str, status: int, log_lines: list[str]) -> None:
    search_server.status = status
    with pytest.raises(ToolError, match=f"HTTP {status}") as caught:
        await searcher(provider, search_server).call({"query": "q"})
    assert KEY not in str(caught.value)
    assert not any(KEY in line for line in log_lines)


@pytest.mark.parametrize("body", [b"<html>not json</html>", b"", b"[" * 100_000])
async def test_search_bad_json(search_server: FakeSearch, body: bytes) -> None:
    search_server.raw_body = body
    with pytest.raises(ToolError, match="JSON"):
        await searcher("tavily", search_server).call({"query": "q"})


@pytest.mark.parametrize(
    "body", [b"{}", b"[]", b'{"results": "x"}', b'{"results": [1, null, {"title": 5}]}', b'{"webPages": null}']
)
async def test_search_odd_shapes_give_no_results(search_server: FakeSearch, body: bytes) -> None:
    search_server.raw_body = body
    for provider in EXPECTED_REQUEST:
        assert await searcher(provider, search_server).call({"query": "q"}) == "没有找到相关结果。"


async def test_search_bocha_error_code(search_server: FakeSearch) -> None:
    search_server.raw_body = b'{"code": "403", "message": "You do not have enough money"}'
    with pytest.raises(ToolError, match="code 403"):
        await searcher("bocha", search_server).call({"query": "q"})


async def test_search_timeout(search_server: FakeSearch) -> None:
    search_server.hang = True
    with pytest.raises(ToolError, match="超时"):
        await searcher("bing", search_server, timeout=0.5).call({"query": "q"})


async def test_search_unreachable(log_lines: list[str]) -> None:
    tool = WebSearch("tavily", api_key=KEY, search_url=f"http://127.0.0.1:{free_port()}", max_results=5, timeout=5)
    with pytest.raises(ToolError, match="无法连接"):
        await tool.call({"query": "q"})
    assert not any(KEY in line for line in log_lines)


async def test_search_url_may_be_the_full_endpoint(search_server: FakeSearch) -> None:
    tool = searcher("bing", search_server, search_url=search_server.base_url + "/v7.0/search/")
    assert (await tool.call({"query": "q"})).startswith("1. ")
    assert search_server.requests[0].path == "/v7.0/search"


@pytest.mark.parametrize("arguments", [{}, {"query": ""}, {"query": "   "}, {"query": ["x"]}])
async def test_search_needs_a_query(search_server: FakeSearch, arguments: dict[str, Any]) -> None:
    with pytest.raises(ToolError, match="query"):
        await searcher("searxng", search_server).call(arguments)
    assert search_server.requests == []


def test_search_needs_a_key_or_an_instance() -> None:
    with pytest.raises(ToolError, match="API key"):
        WebSearch("tavily", api_key="", search_url="", max_results=5, timeout=5)
    with pytest.raises(ToolError, match="search_url"):
        WebSearch("searxng", api_key="", search_url="", max_results=5, timeout=5)


# ---------------------------------------------------------------- builtin_tools


def names(settings: ToolSettings) -> list[str]:
    return [tool.spec.name for tool in builtin_tools(settings)]


def test_builtin_tools_honour_each_switch(log_lines: list[str]) -> None:
    assert names(ToolSettings()) == ["current_time", "web_fetch"]
    assert names(ToolSettings(time=False, fetch=False)) == []
    assert names(ToolSettings(search="searxng", search_url="http://127.0.0.1:8888")) == [
        "current_time",
        "web_fetch",
        "web_search",
    ]
    assert names(ToolSettings(fetch=False, search="bocha", search_api_key=KEY)) == ["current_time", "web_search"]
    assert names(ToolSettings(search="tavily")) == ["current_time", "web_fetch"]  # no key: left out, with a warning
    assert any("web_search (tavily) is off" in line for line in log_lines)
    assert not any(KEY in line for line in log_lines)


def test_builtin_tools_carry_the_settings() -> None:
    settings = ToolSettings(fetch_max_bytes=4096, fetch_max_chars=300, timeout=7.5, search="bing", search_api_key=KEY)
    tools = {tool.spec.name: tool for tool in builtin_tools(settings)}
    fetch = tools["web_fetch"]
    assert isinstance(fetch, WebFetch)
    assert (fetch.max_bytes, fetch.max_chars, fetch.timeout) == (4096, 300, 7.5)
    for tool in tools.values():
        assert tool.spec.openai()["function"]["parameters"]["type"] == "object"
