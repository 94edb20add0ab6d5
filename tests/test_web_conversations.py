"""The console's conversations page through real sockets: sessions, history with markers, search, reset, export."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import select, update

from storage.base import RESET_ROLE
from storage.browse import like_pattern, parse_session_key
from storage.models import messages, sessions
from storage.store import SqlHistoryStore
from storage.transfer import HISTORY_FORMAT, PAGE, import_history
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, mirai_url
from tests.console_client import PASSWORD, ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai, friend_message
from tests.fakes.openai_server import FakeOpenAI

__all__ = ["console"]  # the fixture, used by name

SECRETS = (PASSWORD, VERIFY_KEY, "sk-test-1")
ROUTES = (
    "/conversations",
    "/conversations/session?key=qq:private:1",
    "/conversations/search?q=x",
    "/conversations/export?key=qq:private:1",
)


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def session_rows(page: str) -> list[str]:
    """The session keys of the list's rows, in page order."""
    return [unescape(key) for key in re.findall(r'<tr data-session="([^"]*)"', page)]


def history_roles(page: str) -> list[tuple[int, str]]:
    """(id, role) of the history entries, in page order."""
    return [
        (int(id_), role)
        for id_, role in re.findall(r'<li (?:class="marker" )?id="[mr](\d+)"[^>]*data-role="(\w+)"', page)
    ]


def piece(page: str, pattern: str) -> str:
    """The first match of `pattern` in `page` (failing the test when there is none)."""
    found = re.search(pattern, page, re.S)
    assert found, f"nothing matches {pattern}"
    return found.group(0)


def cells(page: str, session_key: str) -> list[str]:
    """The text of each cell of the list's row for `session_key`."""
    row = piece(page, rf'<tr data-session="{re.escape(session_key)}">.*?</tr>')
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def link(page: str, element_id: str) -> str:
    found = re.search(rf'<a href="([^"]*)" id="{element_id}"', page)
    assert found, f"no #{element_id} link"
    return unescape(found.group(1))


async def seed(client: ConsoleClient, key: str, count: int, *, now: float = 1000.0, prefix: str = "q") -> None:
    for i in range(count):
        await client.app.store.append_exchange(key, f"{prefix}{i}", f"r{i}", now=now)


async def stored(client: ConsoleClient, key: str) -> list[tuple[int, str, bool]]:
    async with client.app.store.engine.connect() as conn:
        query = select(messages.c.id, messages.c.role, messages.c.hidden).where(messages.c.session_key == key)
        return [(row[0], row[1], bool(row[2])) for row in (await conn.execute(query.order_by(messages.c.id))).all()]


# --- the session list -----------------------------------------------------------------------------


async def test_the_list_shows_each_session_newest_first_with_its_parts(console: Any) -> None:
    client: ConsoleClient = await console()
    await seed(client, "qq:private:1001", 2, now=1000.0)
    await seed(client, "qq:group:2002:1001", 1, now=3000.0)
    await seed(client, "qq:group:3003", 3, now=2000.0)
    await seed(client, "qqbot:private:OPENID9", 1, now=4000.0)
    await client.app.store.update_session("qq:group:3003", preset="猫娘", model="m2")
    await client.app.store.update_session("qq:group:3003", preset="猫娘")  # updated_at: now, the newest
    await client.app.store.reset("qq:private:1001")  # a marker: not counted as a message

    status, page = await client.get("/conversations")
    assert status == 200 and '<a href="/conversations" class="current" aria-current="page">会话</a>' in page
    # the reset came last, then the preset change; the others by their messages' times
    assert session_rows(page) == ["qq:private:1001", "qq:group:3003", "qqbot:private:OPENID9", "qq:group:2002:1001"]
    group = cells(page, "qq:group:3003")
    assert group[:5] == ["qq", "群聊", "—", "3003", "6"] and group[6] == "猫娘 / m2"
    assert cells(page, "qq:group:2002:1001")[:5] == ["qq", "成员", "1001", "2002", "2"]
    assert cells(page, "qq:private:1001")[:5] == ["qq", "私聊", "1001", "—", "4"]  # the marker is no message
    no_secret_in(page)

    _, only_qq = await client.get("/conversations?platform=qq")
    assert "qqbot:private:OPENID9" not in session_rows(only_qq) and len(session_rows(only_qq)) == 3
    _, by_group = await client.get("/conversations?platform=qq&id=2002")
    assert session_rows(by_group) == ["qq:group:2002:1001"]
    _, by_id = await client.get("/conversations?id=openid")  # case as stored does not matter on SQLite
    assert session_rows(by_id) == ["qqbot:private:OPENID9"]
    _, none = await client.get("/conversations?id=%25")  # a literal %, which no key holds
    assert session_rows(none) == [] and "no sessions match the filter" in none


async def test_the_list_pages_by_cursor_even_when_times_tie(console: Any) -> None:
    client: ConsoleClient = await console()
    keys = {f"qq:private:{n}" for n in range(57)}
    for key in keys:
        await client.app.store.append_exchange(key, "q", "r", now=5000.0)  # the same time for every session
    _, first = await client.get("/conversations")
    shown = session_rows(first)
    assert len(shown) == 50
    _, second = await client.get(link(first, "next-page"))
    rest = session_rows(second)
    assert len(rest) == 7 and 'id="next-page"' not in second and "最新 newest" in second
    assert set(shown) | set(rest) == keys and not set(shown) & set(rest)


# --- one session ------------------------------------------------------------------------------------


async def test_a_session_shows_its_history_newest_first_with_rollbacks_and_resets(console: Any) -> None:
    client: ConsoleClient = await console()
    store, key = client.app.store, "qq:private:1001"
    await seed(client, key, 2)  # ids 1..4
    assert await store.rollback(key)  # hides 3, 4
    await store.reset(key)  # marker 5
    await store.append_exchange(key, "<script>alert(1)</script>", "after", now=2000.0)  # 6, 7

    status, page = await client.get(f"/conversations/session?key={key}")
    assert status == 200
    roles = [(7, "assistant"), (6, "user"), (5, RESET_ROLE), (4, "assistant"), (3, "user"), (2, "assistant")]
    assert history_roles(page) == [*roles, (1, "user")]
    assert "会话已重置 (reset)" in page
    rolled = piece(page, r'<li id="m3".*?</li>')
    assert "rolled-back" in rolled and "已回滚" in rolled
    kept = piece(page, r'<li id="m1".*?</li>')
    assert "已回滚" not in kept and "重置前 before reset" in kept
    assert "已回滚" not in piece(page, r'<li id="m6".*?</li>') and "重置前" not in piece(page, r'<li id="m6".*?</li>')
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    no_secret_in(page)


async def test_a_long_history_pages_by_id(console: Any) -> None:
    client: ConsoleClient = await console()
    key = "qq:group:2002"
    await seed(client, key, 60)  # 120 rows
    _, first = await client.get(f"/conversations/session?key={key}")
    ids = [id_ for id_, _ in history_roles(first)]
    assert ids == list(range(120, 70, -1))
    older = link(first, "older")
    assert "before=71" in older
    _, second = await client.get(older)
    assert [id_ for id_, _ in history_roles(second)] == list(range(70, 20, -1))
    _, third = await client.get(link(second, "older"))
    assert [id_ for id_, _ in history_roles(third)] == list(range(20, 0, -1)) and 'id="older"' not in third


async def test_a_reset_from_before_markers_is_still_shown(console: Any) -> None:
    client: ConsoleClient = await console()
    key = "qq:private:7"
    await seed(client, key, 2)  # ids 1..4
    async with client.app.store.engine.begin() as conn:  # what an older version's reset left
        await conn.execute(update(sessions).where(sessions.c.session_key == key).values(cleared_before=2))
    _, page = await client.get(f"/conversations/session?key={key}")
    assert history_roles(page) == [(4, "assistant"), (3, "user"), (2, RESET_ROLE), (2, "assistant"), (1, "user")]
    assert "before markers were stored" in page


# --- search -----------------------------------------------------------------------------------------


async def test_search_matches_percent_underscore_and_backslash_literally(console: Any) -> None:
    client: ConsoleClient = await console()
    store = client.app.store
    for text in ("100% sure", "100 percent", "a_b", "axb", "back\\slash", "backslash", "Hello World"):
        await store.append_exchange("qq:private:5", text, "ok")

    async def found(query: dict[str, str]) -> list[str]:
        status, page = await client.get("/conversations/search", params=query)
        assert status == 200
        return [unescape(cell) for cell in re.findall(r'<td class="content">(.*?)</td>', page, re.S)]

    assert await found({"q": "%"}) == ["100% sure"]
    assert await found({"q": "_"}) == ["a_b"]
    assert await found({"q": "\\"}) == ["back\\slash"]
    assert await found({"q": "hello"}) == ["Hello World"]  # case does not matter
    assert await found({"q": "no such text"}) == []
    _, page = await client.get("/conversations/search", params={"q": "a_b"})
    assert "/conversations/session?key=qq%3Aprivate%3A5&amp;before=" in page  # each hit links to its session


async def test_search_stops_at_a_hundred_hits_and_continues_older(console: Any) -> None:
    client: ConsoleClient = await console()
    await seed(client, "qq:private:1", 70, prefix="needle-")
    await seed(client, "qq:private:2", 60, prefix="needle-")
    _, first = await client.get("/conversations/search?q=needle")
    hits = re.findall(r'<tr data-message="(\d+)"', first)
    assert len(hits) == 100 and hits == sorted(hits, key=int, reverse=True)
    _, second = await client.get(link(first, "search-older"))
    rest = re.findall(r'<tr data-message="(\d+)"', second)
    assert len(rest) == 30 and not set(hits) & set(rest) and 'id="search-older"' not in second
    _, one = await client.get("/conversations/search?q=needle-1&key=qq:private:2")  # needle-1, needle-1x
    keys = re.findall(r'<a href="/conversations/session\?key=([^&"]*)&amp;', one)
    assert len(keys) == 11 and set(keys) == {"qq%3Aprivate%3A2"}


# --- reset and export -------------------------------------------------------------------------------


async def test_reset_starts_a_new_conversation_and_leaves_a_marker(console: Any) -> None:
    client: ConsoleClient = await console()
    key = "qq:private:1001"
    await seed(client, key, 2)
    async with client.http.post(
        client.base + "/conversations/reset",
        data={"key": key},
        headers={"Origin": client.base, "X-CSRF-Token": client.csrf},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        target = response.headers["Location"]
    assert unquote(target) == "/conversations/session?key=qq:private:1001&done=reset"
    assert await client.app.store.window(key, 10_000) == []
    assert [role for _, role, _ in await stored(client, key)][-1] == RESET_ROLE
    _, page = await client.get(target)
    assert 'id="reset-done"' in page and history_roles(page)[0][1] == RESET_ROLE

    status, _ = await client.post("/conversations/reset", {"key": key}, headers={"HX-Request": "true"})
    assert status == 200  # htmx follows HX-Redirect itself
    assert [role for _, role, _ in await stored(client, key)][-2:] == [RESET_ROLE, RESET_ROLE]


async def test_reset_stops_a_running_answer_first(console: Any, fake_llm: FakeOpenAI) -> None:
    client: ConsoleClient = await console({"response": {"timeout": 20, "max_timeout": 60}})
    mirai = FakeMirai(mirai_url(client.app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    try:
        fake_llm.latency = 30.0  # no test waits for this answer
        await mirai.push(friend_message(4242, "慢问题", 1))
        await eventually(lambda: client.app.manager.queues()["answering"] == 1)
        status, _ = await client.post("/conversations/reset", {"key": "qq:private:4242"})
        assert status == 200
        await eventually(lambda: client.app.manager.queues()["answering"] == 0, timeout=2)
        assert [role for _, role, _ in await stored(client, "qq:private:4242")] == [RESET_ROLE]  # nothing stored after
    finally:
        fake_llm.latency = 0
        await mirai.close()


async def test_export_is_the_history_transfer_format(console: Any, tmp_path: Path) -> None:
    client: ConsoleClient = await console()
    store, key = client.app.store, "qq:group:2002:1001"
    count = PAGE // 2 + 5  # more rows than one page
    await seed(client, key, count)
    assert await store.rollback(key)
    await store.reset(key)
    await store.append_exchange(key, "最后", "回答")
    await store.update_session(key, preset="猫娘")
    await seed(client, "qq:private:7", 3)  # another session: not in this export
    async with client.http.get(client.base + f"/conversations/export?key={key}") as response:
        assert response.status == 200
        assert response.headers["Content-Disposition"] == 'attachment; filename="qq_group_2002_1001.jsonl"'
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        body = await response.text()
    no_secret_in(body)
    records = [json.loads(line) for line in body.splitlines()]
    header, session, *rows = records
    assert header["kind"] == "header" and header["format"] == HISTORY_FORMAT and header["version"] == 1
    assert session["kind"] == "session" and session["session_key"] == key
    assert session["preset"] == "猫娘" and session["cleared_before"] == 2 * count + 1
    assert [row["id"] for row in rows] == [row[0] for row in await stored(client, key)]
    assert len(rows) == 2 * count + 3 and {row["kind"] for row in rows} == {"message"}
    assert [row["role"] for row in rows[-5:]] == ["user", "assistant", RESET_ROLE, "user", "assistant"]
    assert [row["hidden"] for row in rows[-5:]] == [True, True, True, False, False]
    assert rows[-1]["content"] == "回答"
    assert all(datetime.fromisoformat(row["created_at"]).utcoffset() == timedelta(0) for row in rows)
    # The same format as --export-history: it imports, and gives the same window elsewhere.
    path = tmp_path / "session.jsonl"
    path.write_text(body, encoding="utf-8")
    elsewhere = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.sqlite3'}")
    try:
        imported = await import_history(elsewhere.engine, path)
        assert (imported.sessions, imported.messages) == (1, 2 * count + 3)
        assert await elsewhere.window(key, 10_000) == await store.window(key, 10_000)
        assert (await elsewhere.get_session(key)).preset == "猫娘"
    finally:
        await elsewhere.close()


# --- bad input and access -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/conversations?after=garbage",
        "/conversations?after=nan|qq:private:1",
        "/conversations?platform=a%20b",
        "/conversations?id=" + "9" * 65,
        "/conversations/session",
        "/conversations/session?key=%20",
        "/conversations/session?key=" + "k" * 256,
        "/conversations/session?key=qq:private:1&before=abc",
        "/conversations/session?key=qq:private:1&before=-1",
        "/conversations/session?key=qq:private:1&before=0",
        "/conversations/session?key=qq:private:1&before=9999999999999999999",  # beyond 64 bits
        "/conversations/search?q=" + "x" * 201,
        "/conversations/search?q=x&before=%EF%BC%91",
        "/conversations/search?q=a%00b",
        "/conversations/export",
    ],
)
async def test_bad_input_gets_400_with_a_reason(console: Any, path: str) -> None:
    client: ConsoleClient = await console()
    await seed(client, "qq:private:1", 1)
    status, text = await client.get(path)
    assert status == 400 and "\n" not in text.strip() and text.strip()


async def test_unknown_sessions_are_404_and_a_reset_needs_a_key(console: Any) -> None:
    client: ConsoleClient = await console()
    for path in ("/conversations/session?key=qq:private:404", "/conversations/export?key=qq:private:404"):
        status, text = await client.get(path)
        assert status == 404 and "no such session" in text
    status, _ = await client.post("/conversations/reset", {})
    assert status == 400
    status, _ = await client.get("/conversations/search")
    assert status == 200  # an empty search is just the form


async def test_every_route_needs_a_login_and_changes_need_csrf(console: Any) -> None:
    client: ConsoleClient = await console(login=False)
    for path in ROUTES:
        async with client.http.get(client.base + path, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"].startswith("/login?next="), path
    status, _ = await client.post("/conversations/reset", {"key": "qq:private:1"}, csrf=False)
    assert status == 401
    await client.login()
    await seed(client, "qq:private:1", 1)
    status, text = await client.post("/conversations/reset", {"key": "qq:private:1"}, csrf=False)
    assert status == 403 and "CSRF" in text
    assert await client.app.store.window("qq:private:1", 1000) != []  # nothing was reset
    for path in ROUTES:
        status, text = await client.get(path)
        assert status == 200, path
        no_secret_in(text)


def test_key_parts_and_like_patterns() -> None:
    assert parse_session_key("qq:private:1").kind == "private"
    member = parse_session_key("qq:group:2:3")
    assert (member.kind, member.group_id, member.user_id) == ("member", "2", "3")
    assert parse_session_key("qq:group:2").kind == "group"
    assert parse_session_key("odd").kind == "" and parse_session_key("web:chat:x:y").user_id == "chat:x:y"
    assert like_pattern("5%_\\") == "%5\\%\\_\\\\%"
