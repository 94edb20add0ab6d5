"""Contract tests of the history store: SQLite, PostgreSQL, MariaDB and in-memory must behave the same."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import bindparam, event, insert, select, text

from core.errors import StorageError
from core.tokens import estimate_tokens
from storage.base import RESET_ROLE, VOICE_OFF, HistoryStore, SessionState, StoredTurn
from storage.memory import MemoryHistoryStore
from storage.models import messages
from storage.store import SqlHistoryStore, _AlchemyTx, _SessionUpsert

pytest_plugins = ("tests.dbservers",)

# Every backend the contract tests run on; the two servers are real ones started by tests/dbservers.py.
BACKENDS = ["sqlite", "sqlite-via-sqlalchemy", "memory", "postgresql", "mariadb"]
SERVER_URL_FIXTURES = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    opened: HistoryStore
    if request.param == "sqlite":
        opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    elif request.param == "sqlite-via-sqlalchemy":  # the path PostgreSQL and other databases take
        opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"), driver_fast_path=False)
    elif request.param in SERVER_URL_FIXTURES:
        opened = await SqlHistoryStore.open(request.getfixturevalue(SERVER_URL_FIXTURES[request.param]))
    else:
        opened = MemoryHistoryStore()
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def sql_store(tmp_path: Path) -> AsyncIterator[SqlHistoryStore]:
    opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    yield opened
    await opened.close()


def contents(turns: list[StoredTurn]) -> list[str]:
    return [turn.content for turn in turns]


async def add_exchanges(store: HistoryStore, session_key: str, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        await store.append_exchange(session_key, f"q{i}", f"r{i}")


# --- contract: both implementations ---------------------------------------------------------


@pytest.mark.asyncio
async def test_both_stores_satisfy_the_protocol(store: HistoryStore) -> None:
    assert isinstance(store, HistoryStore)


@pytest.mark.asyncio
async def test_window_is_oldest_first_and_fits_the_budget(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 3)
    everything = await store.window("s", 10_000)
    assert contents(everything) == ["q0", "r0", "q1", "r1", "q2", "r2"]
    assert [turn.role for turn in everything] == ["user", "assistant"] * 3
    assert all(turn.tokens == estimate_tokens(turn.content) for turn in everything)

    per_turn = estimate_tokens("q0")
    assert contents(await store.window("s", 4 * per_turn)) == ["q1", "r1", "q2", "r2"]
    assert contents(await store.window("s", 4 * per_turn + per_turn - 1)) == ["q1", "r1", "q2", "r2"]


@pytest.mark.asyncio
async def test_window_drops_a_leading_assistant_turn(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 3)
    # Three turns fit, the oldest of them being r1: a window never opens with a reply.
    assert contents(await store.window("s", 3 * estimate_tokens("q0"))) == ["q2", "r2"]


@pytest.mark.asyncio
async def test_window_is_empty_when_the_newest_turn_alone_is_too_big(store: HistoryStore) -> None:
    await store.append_exchange("s", "short", "a much longer reply " * 20)
    assert await store.window("s", 10) == []
    assert await store.window("s", 0) == []
    assert await store.window("never-seen", 1000) == []


@pytest.mark.asyncio
async def test_window_spans_several_pages_and_skips_hidden_rows(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 100)  # 200 rows: more than three pages of 64
    assert await store.rollback("s")
    await store.append_exchange("s", "q-new", "r-new")
    window = await store.window("s", 1_000_000)
    expected = [f"{kind}{i}" for i in range(99) for kind in ("q", "r")] + ["q-new", "r-new"]
    assert contents(window) == expected


@pytest.mark.asyncio
async def test_append_exchange_counts_cjk_tokens(store: HistoryStore) -> None:
    await store.append_exchange("s", "你好世界", "hello world")
    user, reply = await store.window("s", 1000)
    assert (user.role, user.content, user.tokens) == ("user", "你好世界", 4 + 4)
    assert (reply.role, reply.tokens) == ("assistant", estimate_tokens("hello world"))


@pytest.mark.asyncio
async def test_reset_hides_earlier_turns(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 2)
    await store.reset("s")
    assert await store.window("s", 1000) == []
    await store.append_exchange("s", "after", "reset")
    assert contents(await store.window("s", 1000)) == ["after", "reset"]
    await store.reset("never-seen")  # resetting an empty session is harmless
    assert await store.window("never-seen", 1000) == []


@pytest.mark.asyncio
async def test_rollback_pops_one_pair_then_reports_none_left(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 2)
    assert await store.rollback("s") is True
    assert contents(await store.window("s", 1000)) == ["q0", "r0"]
    assert await store.rollback("s") is True
    assert await store.window("s", 1000) == []
    assert await store.rollback("s") is False
    assert await store.rollback("never-seen") is False


@pytest.mark.asyncio
async def test_rollback_does_not_reach_behind_a_reset(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 1)
    await store.reset("s")
    assert await store.rollback("s") is False


@pytest.mark.asyncio
async def test_reset_markers_never_reach_the_window_or_rollback(store: HistoryStore) -> None:
    await add_exchanges(store, "s", 2)
    await store.reset("s")
    await store.reset("s")
    assert await store.window("s", 1000) == [] and await store.rollback("s") is False
    await store.append_exchange("s", "q-new", "r-new")
    await store.reset("s")
    await store.append_exchange("s", "q-last", "r-last")
    assert contents(await store.window("s", 1000)) == ["q-last", "r-last"]
    assert await store.rollback("s") is True  # the last visible pair, not a marker
    assert await store.window("s", 1000) == [] and await store.rollback("s") is False


@pytest.mark.asyncio
async def test_two_sessions_never_mix(store: HistoryStore) -> None:
    for i in range(3):
        await store.append_exchange("group:1:user:2", f"a{i}", f"ra{i}")
        await store.append_exchange("private:3", f"b{i}", f"rb{i}")
    assert contents(await store.window("group:1:user:2", 1000)) == ["a0", "ra0", "a1", "ra1", "a2", "ra2"]
    await store.reset("group:1:user:2")
    assert await store.rollback("private:3")
    assert await store.window("group:1:user:2", 1000) == []
    assert contents(await store.window("private:3", 1000)) == ["b0", "rb0", "b1", "rb1"]
    await store.update_session("private:3", preset="cat")
    assert (await store.get_session("group:1:user:2")).preset == ""


@pytest.mark.asyncio
async def test_session_state_update_and_get(store: HistoryStore) -> None:
    assert await store.get_session("s") == SessionState("s")
    await store.update_session("s", preset="猫娘", model="deepseek-chat")
    await store.update_session("s", account="backup")
    state = await store.get_session("s")
    assert (state.preset, state.model, state.account) == ("猫娘", "deepseek-chat", "backup")
    assert state.updated_at > 0
    await store.append_exchange("s", "q", "r", now=1234.5)
    state = await store.get_session("s")
    assert state.updated_at == 1234.5 and state.preset == "猫娘"  # a message keeps the settings
    with pytest.raises(TypeError):
        await store.update_session("s", temperature="2")


@pytest.mark.asyncio
async def test_the_voice_setting_round_trips_and_leaves_the_other_settings_alone(store: HistoryStore) -> None:
    await store.update_session("s", preset="猫娘", model="m", account="a", reply_mode="image")
    assert (await store.get_session("s")).voice == ""  # follow the configured voice
    await store.update_session("s", voice="xiaoxiao")
    state = await store.get_session("s")
    assert state.voice == "xiaoxiao"
    assert (state.preset, state.model, state.account, state.reply_mode) == ("猫娘", "m", "a", "image")
    await store.update_session("s", voice=VOICE_OFF)
    await store.update_session("s", preset="default")  # another setting leaves the voice
    await store.append_exchange("s", "q", "r")
    await store.reset("s")
    state = await store.get_session("s")
    assert (state.voice, state.preset, state.model, state.reply_mode) == ("off", "default", "m", "image")
    await store.update_session("new", voice="zh-CN-XiaoxiaoNeural 😀")  # a first setting creates the session
    assert await store.get_session("new") == SessionState(
        "new", updated_at=(await store.get_session("new")).updated_at, voice="zh-CN-XiaoxiaoNeural 😀"
    )
    assert (await store.get_session("other")).voice == ""
    with pytest.raises(TypeError):
        await store.update_session("s", voice=None)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_closed_store_raises_storage_error(store: HistoryStore) -> None:
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StorageError):
        await store.window("s", 1000)
    with pytest.raises(StorageError):
        await store.append_exchange("s", "q", "r")


@pytest.mark.asyncio
async def test_concurrent_sessions_do_not_collide(store: HistoryStore) -> None:
    async def chat(session_key: str) -> None:
        for i in range(10):
            await store.append_exchange(session_key, f"{session_key}-q{i}", f"{session_key}-r{i}")
            if i % 3 == 0:
                assert await store.rollback(session_key)
            await store.window(session_key, 500)

    await asyncio.gather(*(chat(f"s{n}") for n in range(8)))
    for n in range(8):
        window = await store.window(f"s{n}", 100_000)
        assert len(window) == 2 * (10 - 4)
        assert all(turn.content.startswith(f"s{n}-") for turn in window)


@pytest.mark.asyncio
async def test_cancelled_appends_never_leave_half_an_exchange(store: HistoryStore) -> None:
    tasks = [asyncio.create_task(store.append_exchange("s", f"q{i}", f"r{i}")) for i in range(20)]
    for _ in range(3):
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.append_exchange("s", "q-last", "r-last")
    if isinstance(store, SqlHistoryStore):
        # On the SQLAlchemy path cancelled appends finish in the background; close() waits for them.
        await store.close()
        store = await SqlHistoryStore.open(store.engine.url.render_as_string(hide_password=False))
    try:
        window = await store.window("s", 100_000)
    finally:
        await store.close()
    assert [turn.role for turn in window] == ["user", "assistant"] * (len(window) // 2)
    assert [turn.content[1:] for turn in window[0::2]] == [turn.content[1:] for turn in window[1::2]]
    assert "q-last" in contents(window)


@pytest.mark.asyncio
async def test_emoji_and_case_different_keys_round_trip(store: HistoryStore) -> None:
    # 4-byte UTF-8 (emoji, rare CJK) needs utf8mb4 on MariaDB; its default collations ignore case.
    text = "笑死😂🐱 𠀀 Ünïcödé"
    await store.append_exchange("qq:private:Ab", text, "👍" * 3)
    await store.append_exchange("qq:private:aB", "lower", "case")
    await store.update_session("qq:private:Ab", preset="猫娘🐱")
    assert contents(await store.window("qq:private:Ab", 1000)) == [text, "👍👍👍"]
    assert contents(await store.window("qq:private:aB", 1000)) == ["lower", "case"]
    assert await store.window("qq:private:ab", 1000) == []
    assert (await store.get_session("qq:private:Ab")).preset == "猫娘🐱"
    assert (await store.get_session("qq:private:aB")).preset == ""
    await store.reset("qq:private:aB")
    assert contents(await store.window("qq:private:Ab", 1000)) == [text, "👍👍👍"]


@pytest.mark.asyncio
async def test_long_replies_and_exact_times_are_kept(store: HistoryStore) -> None:
    reply = "长" * 40_000  # 120,000 bytes in UTF-8: more than MySQL's TEXT holds
    await store.append_exchange("s", "q", reply, now=1_700_000_000.123456)
    assert contents(await store.window("s", 1_000_000)) == ["q", reply]
    assert (await store.get_session("s")).updated_at == 1_700_000_000.123456  # double precision


@pytest.mark.asyncio
async def test_a_nul_character_never_loses_the_exchange(store: HistoryStore) -> None:
    await store.append_exchange("s", "a\x00b", "ok")
    stored = contents(await store.window("s", 1000))
    # PostgreSQL's text cannot hold U+0000: there it becomes U+FFFD instead of failing the write.
    nul_free = isinstance(store, SqlHistoryStore) and store.engine.dialect.name == "postgresql"
    assert stored == ["a\ufffdb" if nul_free else "a\x00b", "ok"]


# --- SQLite only ------------------------------------------------------------------------------


async def scalar(store: SqlHistoryStore, sql: str) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


@pytest.mark.asyncio
async def test_reset_and_rollback_keep_every_row_in_the_database(sql_store: SqlHistoryStore) -> None:
    await add_exchanges(sql_store, "s", 3)
    assert await sql_store.rollback("s")
    await sql_store.reset("s")
    assert await sql_store.window("s", 1000) == []
    assert await scalar(sql_store, "SELECT count(*) FROM messages") == 7  # six turns and the reset marker
    assert await scalar(sql_store, "SELECT count(*) FROM messages WHERE hidden") == 3
    assert await scalar(sql_store, "SELECT cleared_before FROM sessions WHERE session_key = 's'") == 7


async def stored_rows(store: SqlHistoryStore, session_key: str) -> list[tuple[Any, ...]]:
    async with store.engine.connect() as conn:
        query = (
            select(messages.c.id, messages.c.role, messages.c.content, messages.c.tokens, messages.c.hidden)
            .where(messages.c.session_key == session_key)
            .order_by(messages.c.id)
        )
        return [tuple(row) for row in (await conn.execute(query)).all()]


@pytest.mark.asyncio
@pytest.mark.parametrize("fast_path", [True, False])
async def test_every_reset_leaves_a_hidden_marker_row(tmp_path: Path, fast_path: bool) -> None:
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"), driver_fast_path=fast_path)
    try:
        await add_exchanges(store, "s", 1)
        await store.reset("s")
        await store.reset("s")  # twice in a row: two markers, both kept
        await store.append_exchange("s", "q-after", "r-after")
        await store.reset("never-seen")
        rows = await stored_rows(store, "s")
        assert [row[1] for row in rows] == ["user", "assistant", RESET_ROLE, RESET_ROLE, "user", "assistant"]
        assert [(row[2], row[3], bool(row[4])) for row in rows[2:4]] == [("", 0, True)] * 2
        # cleared_before is the latest marker's own id: the marker closes the old conversation.
        assert await scalar(store, "SELECT cleared_before FROM sessions WHERE session_key = 's'") == rows[3][0]
        assert contents(await store.window("s", 1000)) == ["q-after", "r-after"]
        assert [row[1] for row in await stored_rows(store, "never-seen")] == [RESET_ROLE]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_reopening_the_file_keeps_history(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "data" / "bot.sqlite3")  # the missing folder is created
    first = await SqlHistoryStore.open(url)
    await add_exchanges(first, "s", 3)
    assert await first.rollback("s")
    await first.update_session("s", preset="cat")
    await first.append_exchange("t", "old", "gone")
    await first.reset("t")
    await first.close()

    second = await SqlHistoryStore.open(url)
    try:
        assert contents(await second.window("s", 1000)) == ["q0", "r0", "q1", "r1"]
        assert (await second.get_session("s")).preset == "cat"
        assert await second.window("t", 1000) == []
        await second.append_exchange("s", "q-after-restart", "r-after-restart")
        assert contents(await second.window("s", 1000))[-2:] == ["q-after-restart", "r-after-restart"]
    finally:
        await second.close()


@pytest.mark.asyncio
async def test_a_database_from_an_older_version_gains_the_new_columns(tmp_path: Path, log_lines: list[str]) -> None:
    # The sessions table as the previous release made it: no reply_mode column, one stored row.
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE sessions (session_key VARCHAR(255) NOT NULL PRIMARY KEY,"
            " cleared_before INTEGER DEFAULT '0' NOT NULL, preset VARCHAR(255) DEFAULT '' NOT NULL,"
            " model VARCHAR(255) DEFAULT '' NOT NULL, account VARCHAR(255) DEFAULT '' NOT NULL,"
            " updated_at FLOAT DEFAULT '0' NOT NULL)"
        )
        old.execute("INSERT INTO sessions VALUES ('s', 0, 'cat', 'm', 'a', 5.0)")
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        assert await store.get_session("s") == SessionState("s", "cat", "m", "a", 5.0, "", "")
        await store.update_session("s", reply_mode="image", voice="xiaoxiao")
        await store.append_exchange("s", "q", "r")  # the other tables were created beside it
    finally:
        await store.close()
    store = await SqlHistoryStore.open(sqlite_url(path), driver_fast_path=False)
    try:
        state = await store.get_session("s")
        assert (state.preset, state.reply_mode, state.voice) == ("cat", "image", "xiaoxiao")
    finally:
        await store.close()
    assert sum("added column sessions.reply_mode" in line for line in log_lines) == 1  # once, then it exists
    assert sum("added index ix_sessions_updated_at" in line for line in log_lines) == 1
    with sqlite3.connect(path) as upgraded:
        plan = upgraded.execute(
            "EXPLAIN QUERY PLAN SELECT session_key FROM sessions ORDER BY updated_at DESC"
        ).fetchall()
    assert "ix_sessions_updated_at" in str(plan)


async def test_sqlite_runs_in_wal_mode_with_the_chosen_pragmas(sql_store: SqlHistoryStore) -> None:
    assert await scalar(sql_store, "PRAGMA journal_mode") == "wal"
    assert await scalar(sql_store, "PRAGMA synchronous") == 1  # NORMAL
    assert await scalar(sql_store, "PRAGMA busy_timeout") == 5000
    assert await scalar(sql_store, "PRAGMA foreign_keys") == 1


async def bulk_insert(store: SqlHistoryStore, session_key: str, count: int) -> None:
    rows = [
        {
            "session_key": session_key,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}",
            "tokens": 10,
            "hidden": False,
            "created_at": 0.0,
        }
        for i in range(count)
    ]
    async with store.engine.begin() as conn:
        await conn.execute(insert(messages), rows)


async def vm_steps_of_window(store: SqlHistoryStore, session_key: str, budget: int) -> int:
    """SQLite VM instructions run by one window() call: its real cost, independent of timing."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # 0 = keep running

    await store._driver.set_progress_handler(count, 10)
    try:
        await store.window(session_key, budget)
    finally:
        await store._driver.set_progress_handler(None, 10)
    return steps


@pytest.mark.asyncio
async def test_window_cost_does_not_grow_with_stored_history(sql_store: SqlHistoryStore) -> None:
    await bulk_insert(sql_store, "small", 100)  # more than one page, so both read a full page
    small_steps = await vm_steps_of_window(sql_store, "small", 200)
    await bulk_insert(sql_store, "big", 5000)
    for other in range(4):
        await bulk_insert(sql_store, f"other{other}", 5000)

    statements: list[str] = []
    await sql_store._driver.set_trace_callback(statements.append)
    try:
        window = await sql_store.window("big", 200)
    finally:
        await sql_store._driver.set_trace_callback(None)
    assert contents(window) == [f"message {i}" for i in range(4980, 5000)]
    assert len(statements) == 1  # 20 turns of 10 tokens: one LIMIT 64 page is enough
    assert "LIMIT" in statements[0]

    page = sql_store._first_page
    plan = await sql_store._driver.execute_fetchall("EXPLAIN QUERY PLAN " + page.sql, page.args({"key": "big"}))
    details = " | ".join(row[-1] for row in plan)
    assert "SEARCH messages USING INDEX ix_messages_session_key_id (session_key=? AND id>?)" in details
    assert "SCAN messages" not in details and "TEMP B-TREE" not in details  # no table scan, no sort

    # 25,100 stored rows (5,000 in this session) cost what a 100-row database does.
    big_steps = await vm_steps_of_window(sql_store, "big", 200)
    assert small_steps > 0
    assert big_steps <= small_steps * 1.2, (small_steps, big_steps)

    # A budget spanning pages reads pages only until the budget is spent, not the whole session.
    statements.clear()
    await sql_store._driver.set_trace_callback(statements.append)
    try:
        window = await sql_store.window("big", 1000)  # 100 turns: two pages of 64
    finally:
        await sql_store._driver.set_trace_callback(None)
    assert len(window) == 100 and len(statements) == 2


@pytest.mark.asyncio
async def test_window_via_sqlalchemy_is_one_limited_statement(tmp_path: Path) -> None:
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"), driver_fast_path=False)
    try:
        await bulk_insert(store, "big", 5000)
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            statements.append(statement)

        event.listen(store.engine.sync_engine, "before_cursor_execute", record)
        try:
            assert len(await store.window("big", 200)) == 20
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", record)
        assert len(statements) == 1 and "LIMIT" in statements[0]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_session_upsert_without_on_conflict_updates_then_inserts(sql_store: SqlHistoryStore) -> None:
    # Dialects without ON CONFLICT (MySQL, ...) take the UPDATE-then-INSERT path; run it on SQLite.
    generic = copy.copy(sql_store.engine.dialect)
    generic.name = "generic"
    values: dict[str, Any] = {
        "session_key": bindparam("key"),
        "preset": bindparam("preset"),
        "updated_at": bindparam("now"),
    }
    upsert = _SessionUpsert(generic, values, fast=False)
    assert upsert.native is None
    async with sql_store.engine.begin() as conn:
        await upsert.run(_AlchemyTx(conn), {"key": "s", "preset": "a", "now": 1.0})
        await upsert.run(_AlchemyTx(conn), {"key": "s", "preset": "b", "now": 2.0})
    assert await sql_store.get_session("s") == SessionState("s", preset="b", updated_at=2.0)


@pytest.mark.asyncio
async def test_a_database_failure_becomes_storage_error(sql_store: SqlHistoryStore) -> None:
    async with sql_store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE messages"))
    with pytest.raises(StorageError, match="reading the window"):
        await sql_store.window("s", 1000)
    with pytest.raises(StorageError, match="saving an exchange"):
        await sql_store.append_exchange("s", "q", "r")


@pytest.mark.asyncio
async def test_sqlite_path_inside_a_file_raises_storage_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("x")
    with pytest.raises(StorageError, match="cannot create the folder"):
        await SqlHistoryStore.open(sqlite_url(not_a_folder / "bot.sqlite3"))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "definitely not a url",
        "sqlite:///sync-driver.sqlite3",  # a sync driver cannot serve an async engine
        "postgresql+nosuchdriver://bot:hunter2@localhost/bot",
        "nosuchdb+aiothing://bot:hunter2@localhost/bot",
    ],
)
async def test_unusable_url_raises_storage_error_without_the_password(url: str) -> None:
    with pytest.raises(StorageError) as raised:
        await SqlHistoryStore.open(url)
    message = str(raised.value)
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.asyncio
async def test_unopenable_sqlite_file_raises_storage_error(tmp_path: Path) -> None:
    folder_named_like_the_db = tmp_path / "bot.sqlite3"
    folder_named_like_the_db.mkdir()
    with pytest.raises(StorageError, match="cannot open"):
        await SqlHistoryStore.open(sqlite_url(folder_named_like_the_db))
    join_aiosqlite_threads()


def join_aiosqlite_threads() -> None:
    # After a failed connect aiosqlite stops its worker thread with a future nobody awaits; if the
    # test's event loop closes first, the thread reports "Event loop is closed". Let it finish.
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            thread.join(timeout=5)


# --- estimate_tokens --------------------------------------------------------------------------


def test_estimate_tokens_empty_is_zero() -> None:
    assert estimate_tokens("") == 0


def test_estimate_tokens_ascii_is_about_four_chars_per_token() -> None:
    assert estimate_tokens("a") == 1 + 4
    assert estimate_tokens("x" * 400) == 100 + 4
    assert estimate_tokens("x" * 401) == 101 + 4


def test_estimate_tokens_counts_cjk_kana_hangul_and_fullwidth_one_each() -> None:
    assert estimate_tokens("你好世界") == 4 + 4
    assert estimate_tokens("こんにちはカタカナ") == 9 + 4
    assert estimate_tokens("안녕하세요") == 5 + 4
    assert estimate_tokens("，。！？") == 4 + 4
    assert estimate_tokens(",.!?") == 1 + 4
    assert estimate_tokens("你好, world") == 2 + 2 + 4  # 2 wide + 7 other chars (rounded up)
    assert estimate_tokens("é" * 8) == 2 + 4  # accented Latin is not wide
    assert estimate_tokens("中" * 100) > estimate_tokens("a" * 100) * 3


def test_estimate_tokens_is_fast_on_long_mixed_text() -> None:
    text_2000 = ("你好，世界！Hello world, this is a test. こんにちは 안녕하세요 " * 100)[:2000]
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        estimate_tokens(text_2000)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 500e-6  # ~25 µs measured; generous so slow CI machines do not flake
