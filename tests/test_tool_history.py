"""Tool calls in the append-only history: stored with role "tool", the first rows a window leaves out.

Every contract test runs on SQLite (the aiosqlite fast path and the SQLAlchemy path), the memory
store, and real PostgreSQL and MariaDB servers started by tests/dbservers.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from core.tokens import estimate_tokens
from storage.backup import dump_database
from storage.base import TOOL_ROLE, WINDOW_PAGE, HistoryStore, StoredTool, StoredTurn
from storage.memory import MemoryHistoryStore
from storage.models import messages
from storage.store import SqlHistoryStore
from storage.transfer import export_history, import_history

pytest_plugins = ("tests.dbservers",)

BACKENDS = ["sqlite", "sqlite-via-sqlalchemy", "memory", "postgresql", "mariadb"]
SERVER_URL_FIXTURES = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}

SEARCH = StoredTool("call_1", "web_search", '{"query":"今天的新闻"}', "1. 新闻标题 https://example.com/a")
CLOCK = StoredTool("call_2", "current_time", "{}", "2026-12-03 20:48 Asia/Shanghai")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    opened: HistoryStore
    if request.param == "sqlite":
        opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    elif request.param == "sqlite-via-sqlalchemy":
        opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"), driver_fast_path=False)
    elif request.param in SERVER_URL_FIXTURES:
        opened = await SqlHistoryStore.open(request.getfixturevalue(SERVER_URL_FIXTURES[request.param]))
    else:
        opened = MemoryHistoryStore()
    yield opened
    await opened.close()


def roles(turns: list[StoredTurn]) -> list[str]:
    return [turn.role for turn in turns]


def contents(turns: list[StoredTurn]) -> list[str]:
    return [turn.content for turn in turns]


def tools_of(turns: list[StoredTurn]) -> list[StoredTool | None]:
    return [StoredTool.from_turn(turn) for turn in turns if turn.role == TOOL_ROLE]


def cost(*texts: str) -> int:
    return sum(estimate_tokens(text) for text in texts)


# --- contract: every backend -----------------------------------------------------------------


async def test_tool_rows_come_back_between_the_user_turn_and_the_reply(store: HistoryStore) -> None:
    await store.append_exchange("s", "今天有什么新闻？", "今天的新闻有……", tools=[SEARCH, CLOCK])
    window = await store.window("s", 100_000)
    assert roles(window) == ["user", TOOL_ROLE, TOOL_ROLE, "assistant"]
    assert tools_of(window) == [SEARCH, CLOCK]
    assert all(turn.tokens == estimate_tokens(turn.content) for turn in window)
    record = json.loads(window[1].content)
    assert record == {
        "id": "call_1",
        "name": "web_search",
        "arguments": '{"query":"今天的新闻"}',
        "result": SEARCH.result,
    }
    assert ", " not in window[1].content and "\\u4eca" not in window[1].content  # compact, CJK kept as is


async def test_a_tight_budget_leaves_out_tool_rows_first(store: HistoryStore) -> None:
    await store.append_exchange("s", "q0", "r0", tools=[SEARCH])
    await store.append_exchange("s", "q1", "r1", tools=[SEARCH, CLOCK])
    turns = cost("q0", "r0", "q1", "r1")
    search, clock = estimate_tokens(SEARCH.content()), estimate_tokens(CLOCK.content())

    # No room to spare: every turn, no tool row.
    assert contents(await store.window("s", turns)) == ["q0", "r0", "q1", "r1"]
    # Room for the newest tool row only; the next older one no longer fits.
    window = await store.window("s", turns + clock + search - 1)
    assert contents(window) == ["q0", "r0", "q1", CLOCK.content(), "r1"]
    # Room for all of them.
    window = await store.window("s", turns + clock + 2 * search)
    assert roles(window) == ["user", TOOL_ROLE, "assistant", "user", TOOL_ROLE, TOOL_ROLE, "assistant"]


async def test_tool_rows_never_push_out_a_turn_that_fits_without_them(store: HistoryStore) -> None:
    big = StoredTool("call_9", "web_fetch", '{"url":"https://example.com"}', "正文" * 5000)
    for i in range(5):
        await store.append_exchange("s", f"q{i}", f"r{i}", tools=[big, SEARCH])
    without_tools = cost(*(f"{kind}{i}" for i in range(5) for kind in "qr"))
    for budget in range(without_tools - 3, without_tools + estimate_tokens(SEARCH.content()) + 2):
        window = await store.window("s", budget)
        conversation = [turn for turn in window if turn.role != TOOL_ROLE]
        spent = sum(turn.tokens for turn in window)
        assert spent <= budget
        if budget >= without_tools:
            assert contents(conversation) == [f"{kind}{i}" for i in range(5) for kind in "qr"]
        assert big.content() not in contents(window)


async def test_tool_rows_older_than_the_windows_oldest_turn_stay_out(store: HistoryStore) -> None:
    long_reply = "回答" * 40
    await store.append_exchange("s", "q0", long_reply, tools=[CLOCK])
    await store.append_exchange("s", "q1", "r1", tools=[SEARCH])
    # q0 does not fit; the long reply does but is dropped as a leading reply, which leaves room for
    # both tool rows: only the one inside the window (after its first turn, q1) comes back.
    budget = cost(long_reply, "q1", "r1", "q0") - 1
    assert cost(long_reply, "q0") - 1 >= estimate_tokens(SEARCH.content()) + estimate_tokens(CLOCK.content())
    window = await store.window("s", budget)
    assert contents(window) == ["q1", SEARCH.content(), "r1"]


async def test_an_exchange_without_tools_is_stored_as_before(store: HistoryStore) -> None:
    await store.append_exchange("s", "你好", "你好！", tools=())
    await store.append_exchange("s", "q", "r")
    window = await store.window("s", 1000)
    assert window == [
        StoredTurn("user", "你好", estimate_tokens("你好")),
        StoredTurn("assistant", "你好！", estimate_tokens("你好！")),
        StoredTurn("user", "q", estimate_tokens("q")),
        StoredTurn("assistant", "r", estimate_tokens("r")),
    ]
    assert await store.rollback("s") and contents(await store.window("s", 1000)) == ["你好", "你好！"]


async def test_rollback_hides_the_whole_exchange_with_its_tool_rows(store: HistoryStore) -> None:
    await store.append_exchange("s", "q0", "r0")
    await store.append_exchange("s", "q1", "r1", tools=[SEARCH, CLOCK])
    await store.append_exchange("other", "x", "y", tools=[CLOCK])  # its rows lie among no one else's
    assert await store.rollback("s") is True
    assert contents(await store.window("s", 100_000)) == ["q0", "r0"]
    assert await store.rollback("s") is True
    assert await store.window("s", 100_000) == []
    assert await store.rollback("s") is False
    assert roles(await store.window("other", 100_000)) == ["user", TOOL_ROLE, "assistant"]


async def test_rollback_of_an_exchange_with_more_tool_calls_than_a_page(store: HistoryStore) -> None:
    calls = [StoredTool(f"call_{n}", "current_time", "{}", f"t{n}") for n in range(WINDOW_PAGE + 6)]
    await store.append_exchange("s", "q0", "r0", tools=[SEARCH])
    await store.append_exchange("s", "q1", "r1", tools=calls)
    assert tools_of(await store.window("s", 1_000_000))[1:] == calls
    assert await store.rollback("s") is True
    window = await store.window("s", 1_000_000)
    assert contents(window) == ["q0", SEARCH.content(), "r0"]


async def test_rollback_after_a_reset_finds_nothing_even_with_tool_rows(store: HistoryStore) -> None:
    await store.append_exchange("s", "q0", "r0", tools=[SEARCH])
    await store.reset("s")
    assert await store.rollback("s") is False
    await store.append_exchange("s", "q1", "r1", tools=[CLOCK])
    assert await store.rollback("s") is True and await store.window("s", 1000) == []


async def test_awkward_tool_text_round_trips(store: HistoryStore) -> None:
    odd = StoredTool("call_\x00", "名字", '{"a":"\\u0000"}', 'NUL \x00 emoji 😀 surrogate \ud800 quote " end')
    await store.append_exchange("s", "q", "r", tools=[odd])
    [turn] = [turn for turn in await store.window("s", 100_000) if turn.role == TOOL_ROLE]
    assert StoredTool.from_turn(turn) == odd


# --- StoredTool.from_turn ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        '["a", "list"]',
        '"a string"',
        '{"id": "c", "name": "n", "arguments": "{}"}',
        '{"id": "c", "name": "n", "arguments": {}, "result": "r"}',
        '{"id": 1, "name": "n", "arguments": "{}", "result": "r"}',
        '{"id": "c", "name": null, "arguments": "{}", "result": "r"}',
        "[" * 100_000,
        "\udcff",
    ],
)
def test_a_malformed_tool_row_gives_none(content: str) -> None:
    assert StoredTool.from_turn(StoredTurn(TOOL_ROLE, content, 1)) is None


def test_only_tool_rows_hold_a_tool_call() -> None:
    assert StoredTool.from_turn(StoredTurn("assistant", SEARCH.content(), 1)) is None
    assert StoredTool.from_turn(StoredTurn(TOOL_ROLE, SEARCH.content(), 1)) == SEARCH
    extra = json.dumps({**json.loads(SEARCH.content()), "later_field": 1})
    assert StoredTool.from_turn(StoredTurn(TOOL_ROLE, extra, 1)) == SEARCH  # unknown fields are ignored


async def test_a_malformed_tool_row_in_the_database_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    try:
        await store.append_exchange("s", "q", "r", tools=[SEARCH])
        async with store.engine.begin() as conn:  # as a hand edit or an older version might leave it
            row = {"session_key": "s", "role": TOOL_ROLE, "content": "{broken", "tokens": 2}
            await conn.execute(messages.insert().values(**row, hidden=False, created_at=0.0))
        window = await store.window("s", 100_000)
        assert roles(window) == ["user", TOOL_ROLE, "assistant", TOOL_ROLE]
        assert tools_of(window) == [SEARCH, None]
    finally:
        await store.close()


# --- SQL: the window stays one indexed page; transfer carries tool rows -------------------------------


async def test_tool_texts_are_read_only_for_the_tool_rows_chosen(tmp_path: Path) -> None:
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    try:
        for i in range(10):
            await store.append_exchange("s", f"q{i}", f"r{i}", tools=[SEARCH])
        turns = cost(*(f"{kind}{i}" for i in range(10) for kind in "qr"))
        statements: list[str] = []
        await store._driver.set_trace_callback(statements.append)
        try:
            window = await store.window("s", turns)  # no room for a tool row: one page, no second read
            assert len(window) == 20 and len(statements) == 1 and "LIMIT" in statements[0]
            statements.clear()
            window = await store.window("s", turns + 2 * estimate_tokens(SEARCH.content()))
            assert tools_of(window) == [SEARCH, SEARCH] and len(statements) == 2
        finally:
            await store._driver.set_trace_callback(None)
        page, texts = store._first_page, store._tool_texts
        assert texts.sql.count("?") == 4  # session, the id range, the role: nothing grows with the window
        index = "SEARCH messages USING INDEX ix_messages_session_key_id"
        ranges = (
            (page, {"key": "s"}, f"{index} (session_key=? AND id>?)"),
            (texts, {"key": "s", "first": 1, "last": 9}, f"{index} (session_key=? AND id>? AND id<?)"),
        )
        for statement, args, expected in ranges:
            plan = await store._driver.execute_fetchall("EXPLAIN QUERY PLAN " + statement.sql, statement.args(args))
            details = " | ".join(row[-1] for row in plan)
            assert expected in details and "SCAN messages" not in details and "TEMP B-TREE" not in details
    finally:
        await store.close()


async def stored_rows(store: SqlHistoryStore) -> list[tuple[str, str, str, int, bool]]:
    m = messages.c
    query = select(m.session_key, m.role, m.content, m.tokens, m.hidden).order_by(m.id)
    async with store.engine.connect() as conn:
        return [(r[0], r[1], r[2], r[3], bool(r[4])) for r in (await conn.execute(query)).all()]


@pytest.mark.parametrize("kind", ["export", "dump"])
async def test_export_import_and_dump_carry_tool_rows(tmp_path: Path, kind: str) -> None:
    source = await SqlHistoryStore.open(sqlite_url(tmp_path / "source.sqlite3"))
    path = tmp_path / f"{kind}.jsonl"
    try:
        await source.append_exchange("s", "q0", "r0", tools=[SEARCH])
        await source.append_exchange("s", "q1", "r1", tools=[CLOCK, SEARCH])
        assert await source.rollback("s")
        await source.append_exchange("s", "q2", "r2", tools=[CLOCK])
        expected = await stored_rows(source)
        windows = [await source.window("s", budget) for budget in (5, 40, 100_000)]
        if kind == "export":
            await export_history(source.engine, path, "test source")
        else:
            await dump_database(source.engine, path, "test source")
    finally:
        await source.close()
    target = await SqlHistoryStore.open(sqlite_url(tmp_path / "target.sqlite3"))
    try:
        await import_history(target.engine, path)
        assert await stored_rows(target) == expected
        assert [await target.window("s", budget) for budget in (5, 40, 100_000)] == windows
        assert tools_of(windows[-1]) == [SEARCH, CLOCK]
    finally:
        await target.close()
