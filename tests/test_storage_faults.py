"""Storage faults on real SQLite files: unwritable at start-up, full, locked by another process, read-only."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text

from core.errors import StorageError
from storage.errors import DatabaseNotWritable
from storage.store import RetryPolicy, SqlHistoryStore
from tests.conftest import BOT_QQ, VERIFY_KEY, RunningBot, eventually, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

# Short enough for tests, long enough for several tries (each waits up to 250 ms for a held lock).
QUICK = RetryPolicy(budget=0.8, min_delay=0.01, max_delay=0.1)
NOTICE = "（提示：数据库暂时无法写入，这次对话没有被保存。）"
BIG = "很长的回答。" * 20_000  # needs new pages whatever the free space in the file
NO_LIMIT = 1_073_741_823  # SQLite's default max_page_count

# Another process that takes the database's write lock and keeps it until told to let go.
HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


class LockHolder:
    """A python+sqlite3 subprocess holding the write lock of one database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> LockHolder:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(self.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.strip() == b"locked"
        return self

    @property
    def holding(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def release(self) -> None:
        """Let go of the lock and wait until the process has ended."""
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        assert await asyncio.wait_for(self.proc.wait(), 10) == 0

    async def __aexit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest_asyncio.fixture(params=["fast", "sqlalchemy"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlHistoryStore]:
    opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"), driver_fast_path=request.param == "fast")
    opened.retry = QUICK
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def fast_store(tmp_path: Path) -> AsyncIterator[SqlHistoryStore]:
    opened = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    opened.retry = QUICK
    yield opened
    await opened.close()


async def count_inserts(store: SqlHistoryStore) -> list[str]:
    """Every INSERT into messages the store runs from now on (one per try of append_exchange)."""
    seen: list[str] = []

    def record(statement: str) -> None:
        if statement.startswith("INSERT INTO messages"):
            seen.append(statement)

    if store._writer is not None:
        await store._writer.driver.set_trace_callback(record)
    else:
        event.listen(store.engine.sync_engine, "before_cursor_execute", lambda *args: record(args[2]))
    return seen


async def limit_pages(store: SqlHistoryStore, pages: int) -> None:
    """Make the database "full" at `pages` pages for the store's writes (SQLITE_FULL beyond it)."""
    pragma = f"PRAGMA max_page_count={pages}"
    if store._writer is not None:
        await store._writer.driver.execute_fetchall(pragma)
        return
    # Off the fast path every operation takes a pooled connection: set it as each one opens.
    engine = store.engine.sync_engine
    for listener in _page_limits.pop(engine, []):
        event.remove(engine, "connect", listener)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.cursor().execute(pragma)

    _page_limits[engine] = [on_connect]
    event.listen(engine, "connect", on_connect)
    await store.engine.dispose()  # pooled connections open again, with the limit


_page_limits: dict[Any, list[Any]] = {}


async def page_count(store: SqlHistoryStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text("PRAGMA page_count"))).scalar_one())


# --- start-up ---------------------------------------------------------------------------------


def assert_not_writable_line(exc: BaseException, detail: str) -> None:
    assert isinstance(exc, DatabaseNotWritable) and isinstance(exc, StorageError)
    line = str(exc)
    assert "\n" not in line
    assert line.startswith("数据库无法写入 database not writable: database.url = sqlite+aiosqlite:///")
    assert detail in line
    assert exc.key == "database.url" and exc.one_line() == line


async def test_a_read_only_database_fails_at_open_naming_database_url(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    first = await SqlHistoryStore.open(sqlite_url(path))
    await first.append_exchange("s", "q", "r")
    await first.close()
    # SQLite's own read-only switch: tests run as root, which file permissions would not stop.
    with pytest.raises(StorageError) as raised:
        await SqlHistoryStore.open(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    assert_not_writable_line(raised.value, "(attempt to write a readonly database)")


async def test_a_file_that_is_not_a_database_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    path.write_text("这不是数据库 not a database\n" * 100, encoding="utf-8")
    with pytest.raises(StorageError) as raised:
        await SqlHistoryStore.open(sqlite_url(path))
    assert_not_writable_line(raised.value, "(file is not a database)")


async def test_the_start_up_write_leaves_no_row_behind(tmp_path: Path) -> None:
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "bot.sqlite3"))
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM sessions"))).scalar_one() == 0
    finally:
        await store.close()


# --- disk full ----------------------------------------------------------------------------------


async def test_a_full_disk_is_retried_then_reported_then_recovers(store: SqlHistoryStore) -> None:
    await store.append_exchange("s", "q0", "r0")
    tries = await count_inserts(store)
    await limit_pages(store, await page_count(store))
    began = time.monotonic()
    with pytest.raises(StorageError, match="saving an exchange failed: database or disk is full"):
        await store.append_exchange("s", "q1", BIG)
    assert len(tries) >= 3  # tried again before giving up
    assert time.monotonic() - began < QUICK.budget + 1.0  # gave up when the budget was spent
    assert [t.content for t in await store.window("s", 10**6)] == ["q0", "r0"]  # nothing half-saved

    await limit_pages(store, NO_LIMIT)
    await store.append_exchange("s", "q1", BIG)
    assert [t.content for t in await store.window("s", 10**6)] == ["q0", "r0", "q1", BIG]


async def test_a_write_waiting_for_space_lets_other_sessions_write_and_lands_when_space_returns(
    fast_store: SqlHistoryStore,
) -> None:
    store = fast_store
    store.retry = RetryPolicy(budget=30.0, min_delay=0.01, max_delay=0.05)
    await store.append_exchange("big", "q0", "r0")
    tries = await count_inserts(store)
    await limit_pages(store, await page_count(store))
    big = asyncio.create_task(store.append_exchange("big", "q1", BIG))
    await eventually(lambda: len(tries) >= 2)
    # The lock is free between tries: a small write of another session fits and goes through.
    await asyncio.wait_for(store.append_exchange("small", "hi", "there"), 2)
    assert not big.done()
    await limit_pages(store, NO_LIMIT)
    await asyncio.wait_for(big, 5)
    assert [t.content for t in await store.window("big", 10**6)] == ["q0", "r0", "q1", BIG]
    assert [t.content for t in await store.window("small", 100)] == ["hi", "there"]


# --- a lock held by another process -------------------------------------------------------------


async def test_a_lock_held_elsewhere_fails_the_write_but_not_other_sessions_reads(
    fast_store: SqlHistoryStore, tmp_path: Path, log_lines: list[str]
) -> None:
    store = fast_store
    await store.append_exchange("reader", "q", "r")
    await store.update_session("reader", preset="cat")
    async with LockHolder(tmp_path / "bot.sqlite3") as holder:
        held_at = time.monotonic()
        write = asyncio.create_task(store.append_exchange("writer", "q", "r"))
        await eventually(lambda: any("saving an exchange failed, trying again" in line for line in log_lines))
        began = time.monotonic()
        window = await store.window("reader", 100)
        state = await store.get_session("reader")
        read_took = time.monotonic() - began
        assert [t.content for t in window] == ["q", "r"] and state.preset == "cat"
        assert read_took < 0.5, read_took
        assert not write.done() and holder.holding  # the reads finished while the write was still waiting

        with pytest.raises(StorageError, match="saving an exchange failed: database is locked"):
            await write
        assert holder.holding  # the lock outlasted the retry budget
        # The other process keeps its lock for 10 s in all (the case); reads keep working throughout.
        await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - held_at)))
        assert [t.content for t in await store.window("reader", 100)] == ["q", "r"]
        await holder.release()

    await store.append_exchange("writer", "q2", "r2")
    assert [t.content for t in await store.window("writer", 100)] == ["q2", "r2"]
    assert any("works again" in line for line in log_lines)


async def test_writes_of_one_session_wait_outside_the_lock(fast_store: SqlHistoryStore, tmp_path: Path) -> None:
    store = fast_store
    store.retry = RetryPolicy(budget=30.0, min_delay=0.3, max_delay=0.3)  # mostly asleep between tries
    async with LockHolder(tmp_path / "bot.sqlite3") as holder:
        write = asyncio.create_task(store.append_exchange("writer", "q", "r"))
        await eventually(lambda: store._lock.locked())
        await eventually(lambda: not store._lock.locked())  # let go while still retrying
        assert not write.done()
        await holder.release()
        await asyncio.wait_for(write, 5)  # the next try after the release succeeds
    assert [t.content for t in await store.window("writer", 100)] == ["q", "r"]


# --- read-only at run time: the connection is reopened --------------------------------------------


async def test_a_database_turned_read_only_recovers_through_a_new_connection(
    fast_store: SqlHistoryStore, log_lines: list[str]
) -> None:
    store = fast_store
    await store.append_exchange("s", "q0", "r0")

    def read_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.cursor().execute("PRAGMA query_only=ON")

    assert store._writer is not None
    await store._writer.driver.execute_fetchall("PRAGMA query_only=ON")
    event.listen(store.engine.sync_engine, "connect", read_only)  # reopened connections too
    try:
        with pytest.raises(StorageError, match="attempt to write a readonly database"):
            await store.append_exchange("s", "q1", "r1")
        assert any("reopened a database connection" in line for line in log_lines)
        assert [t.content for t in await store.window("s", 100)] == ["q0", "r0"]  # reads never stopped
    finally:
        event.remove(store.engine.sync_engine, "connect", read_only)
    await store.append_exchange("s", "q1", "r1")
    assert [t.content for t in await store.window("s", 100)] == ["q0", "r0", "q1", "r1"]


# --- end to end: the user is told ---------------------------------------------------------------


async def test_an_answer_that_could_not_be_saved_is_sent_with_the_notice_once(
    bot: RunningBot, tmp_path: Path, fake_llm: FakeOpenAI
) -> None:
    bot.app.store.retry = QUICK
    mirai = bot.mirai
    seen = len(mirai.commands)
    async with LockHolder(tmp_path / "data" / "bot.sqlite3") as holder:
        await mirai.push(friend_message(20001, "你好", 501))
        commands = await mirai.wait_commands(seen + 1)
        assert holder.holding  # the answer went out while the database was still locked
        await holder.release()

    await mirai.push(friend_message(20001, "第二句", 502))
    commands = await mirai.wait_commands(seen + 2)
    # The notice rides in the answer's own message, and only the failed exchange has it.
    assert [sent_text(c) for c in commands[seen:]] == [f"echo: 你好\n\n{NOTICE}", "echo: 第二句"]
    sent = [m["content"] for m in fake_llm.requests[-1]["body"]["messages"] if m["role"] != "system"]
    assert sent == ["第二句"]  # the unsaved exchange is not in the history
    window = await bot.app.store.window("qq:private:20001", 1000)
    assert [t.content for t in window] == ["第二句", "echo: 第二句"]


async def test_a_streamed_answer_gets_the_notice_after_its_last_part(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.reply_fn = lambda body: "第一段。\n\n第二段。"
    # Streamed, with parts sent as soon as they are complete: the first goes out before the save.
    config = write_config({"openai": {"gpt_params": {"stream": True}}, "response": {"buffer_delay": 0}})
    app = await start_bot(config)
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    try:
        await mirai.connect()
        app.store.retry = QUICK
        seen = len(mirai.commands)
        async with LockHolder(tmp_path / "data" / "bot.sqlite3") as holder:
            await mirai.push(friend_message(20001, "讲两段", 601))
            commands = await mirai.wait_commands(seen + 2)
            assert holder.holding
            await holder.release()
        assert [sent_text(c) for c in commands[seen:]] == ["第一段。", f"第二段。\n\n{NOTICE}"]
    finally:
        await mirai.close()
        await app.stop()
