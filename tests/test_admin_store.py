"""AdminStore on a real SQLite file, PostgreSQL and MariaDB server: limits, sliding-window usage,
blacklist, persistence, speed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import DropTable
from sqlalchemy.sql.compiler import SQLCompiler

from core.errors import StorageError
from storage.admin import AdminStore, RateCheck, member_target, usage
from storage.store import SqlHistoryStore

pytest_plugins = ("tests.dbservers",)

NOW = 1_700_000_000.0
# AdminStore always goes through SQLAlchemy (the history store's aiosqlite fast path is not used),
# so SQLite is one backend here; the servers are real ones started by tests/dbservers.py.
BACKENDS = ["sqlite", "postgresql", "mariadb"]
SERVER_URL_FIXTURES = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bot.sqlite3"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param in SERVER_URL_FIXTURES:
        return str(request.getfixturevalue(SERVER_URL_FIXTURES[request.param]))
    return f"sqlite+aiosqlite:///{db_path(tmp_path)}"


@pytest_asyncio.fixture
async def history(database_url: str) -> AsyncIterator[SqlHistoryStore]:
    opened = await SqlHistoryStore.open(database_url)
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def sqlite_history(tmp_path: Path) -> AsyncIterator[SqlHistoryStore]:
    opened = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{db_path(tmp_path)}")
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def admin(history: SqlHistoryStore) -> AsyncIterator[AdminStore]:
    store = AdminStore(history.engine)
    await store.load()
    yield store
    await store.close()


# --- limits -----------------------------------------------------------------------------------


async def test_nothing_set_means_unlimited(admin: AdminStore) -> None:
    assert await admin.limit_for("user", "42") is None
    assert await admin.limit_for("group", "7") is None
    result = await admin.check([("user", "42"), ("group", "7")], now=NOW)
    assert result == RateCheck(True, "user", "42", 0, None)
    assert await admin.check([], now=NOW) == RateCheck(True, "", "", 0, None)


async def test_default_applies_and_own_limit_overrides(admin: AdminStore) -> None:
    await admin.set_limit("group", "default", 30)
    await admin.set_limit("group", "7", 5)
    assert await admin.limit_for("group", "7") == 5
    assert await admin.limit_for("group", "8") == 30
    assert await admin.limit_for("group", "default") == 30
    assert await admin.limit_for("user", "7") is None  # defaults are per scope

    await admin.set_limit("group", "7", 50)  # replacing is an update, not a second row
    assert await admin.limit_for("group", "7") == 50
    assert await admin.clear_limit("group", "7") is True
    assert await admin.clear_limit("group", "7") is False
    assert await admin.limit_for("group", "7") == 30  # back to the default


async def test_limit_zero_lets_nobody_chat(admin: AdminStore) -> None:
    await admin.set_limit("user", "default", 0)
    await admin.set_limit("user", "vip", 10)
    assert await admin.limit_for("user", "someone") == 0  # 0 is a limit, not "no limit"
    assert await admin.check([("user", "someone")], now=NOW) == RateCheck(False, "user", "someone", 0, 0)
    assert (await admin.check([("user", "vip")], now=NOW)).allowed


async def test_bad_arguments_raise_value_error(admin: AdminStore) -> None:
    with pytest.raises(ValueError, match="scope"):
        await admin.set_limit("friend", "1", 5)
    with pytest.raises(ValueError, match="scope"):
        await admin.record(NOW, ("channel", "1"))
    with pytest.raises(ValueError, match="scope"):
        await admin.block("everyone", "1")
    with pytest.raises(ValueError, match="limit"):
        await admin.set_limit("user", "1", -1)
    with pytest.raises(ValueError, match="member target"):
        await admin.block("member", "12345")
    with pytest.raises(ValueError, match="default"):
        await admin.record(NOW, ("user", "default"))
    with pytest.raises(ValueError, match="non-empty"):
        await admin.count("user", "")


# --- usage --------------------------------------------------------------------------------------


async def test_sliding_window_is_one_hour(admin: AdminStore) -> None:
    await admin.record(NOW - 3601, ("user", "1"))
    await admin.record(NOW - 3599, ("user", "1"))
    await admin.record(NOW, ("user", "1"))
    assert await admin.count("user", "1", now=NOW) == 2
    assert await admin.count("user", "1", now=NOW + 2) == 1  # the -3599 row has left the window
    assert await admin.count("user", "1", now=NOW, window=7200) == 3

    await admin.set_limit("user", "1", 2)
    assert await admin.check([("user", "1")], now=NOW) == RateCheck(False, "user", "1", 2, 2)
    assert await admin.check([("user", "1")], now=NOW + 2) == RateCheck(True, "user", "1", 1, 2)


async def test_record_writes_one_row_per_key(admin: AdminStore) -> None:
    member = member_target("7", "1")
    await admin.record(NOW, ("user", "1"), ("group", "7"), ("member", member))
    for scope, target in [("user", "1"), ("group", "7"), ("member", member)]:
        assert await admin.count(scope, target, now=NOW) == 1
    await admin.record(NOW)  # no keys: nothing to do


async def test_member_usage_is_separate_from_user_usage(admin: AdminStore) -> None:
    for _ in range(3):
        await admin.record(NOW, ("user", "1"))  # private chat
    await admin.record(NOW, ("user", "1"), ("member", "7:1"))  # in group 7
    await admin.record(NOW, ("member", "8:1"))
    assert await admin.count("user", "1", now=NOW) == 4
    assert await admin.count("member", "7:1", now=NOW) == 1
    assert await admin.count("member", "8:1", now=NOW) == 1


async def test_limits_lists_every_row_as_a_copy(admin: AdminStore) -> None:
    assert await admin.limits() == {}
    await admin.set_limit("user", "default", 10)
    await admin.set_limit("draw_member", "7:1", 0)
    await admin.set_limit("group", "7", 5)
    await admin.clear_limit("group", "7")
    listed = await admin.limits()
    assert listed == {("user", "default"): 10, ("draw_member", "7:1"): 0}
    listed[("user", "1")] = 1  # the caller's copy: the store is not changed
    assert await admin.limit_for("user", "1") == 10


async def test_counts_of_many_keys_in_one_call(admin: AdminStore) -> None:
    keys = [("member", f"7:{i}") for i in range(250)]  # more than one statement's batch
    for i, key in enumerate(keys):
        for _ in range(i % 4):
            await admin.record(NOW, key)
    await admin.record(NOW - 3601, keys[1])  # out of the window
    counts = await admin.counts([*keys, keys[0], ("draw_user", "1")], now=NOW)
    assert counts == {**{key: i % 4 for i, key in enumerate(keys)}, ("draw_user", "1"): 0}
    assert await admin.counts([], now=NOW) == {}
    with pytest.raises(ValueError):
        await admin.counts([("member", "no-colon")])


async def test_busiest_lists_the_last_hours_usage_most_first(admin: AdminStore) -> None:
    await admin.record(NOW, ("user", "1"), ("draw_group", "7"))
    await admin.record(NOW, ("user", "1"))
    await admin.record(NOW - 10, ("member", "7:1"), ("user", "2"))
    await admin.record(NOW - 3601, ("group", "9"))  # too old
    assert await admin.busiest(now=NOW) == [
        ("user", "1", 2),
        ("draw_group", "7", 1),
        ("member", "7:1", 1),
        ("user", "2", 1),
    ]
    assert await admin.busiest(now=NOW, most=1) == [("user", "1", 2)]
    assert ("group", "9", 1) in await admin.busiest(now=NOW, window=7200)


async def test_check_reports_the_exceeded_key(admin: AdminStore) -> None:
    await admin.set_limit("user", "default", 100)
    await admin.set_limit("group", "default", 100)
    await admin.set_limit("member", "default", 2)
    keys = [("user", "1"), ("group", "7"), ("member", "7:1")]
    for i in range(3):
        result = await admin.check(keys, now=NOW)
        if i < 2:
            assert result.allowed
            assert (result.scope, result.used, result.limit) == ("member", i, 2)  # closest to its limit
            await admin.record(NOW, *keys)
    assert result == RateCheck(False, "member", "7:1", 2, 2)
    # Same user in another group: that member key is fresh, the shared keys are far from limits.
    other = await admin.check([("user", "1"), ("group", "8"), ("member", "8:1")], now=NOW)
    assert other == RateCheck(True, "member", "8:1", 0, 2)

    await admin.set_limit("group", "7", 1)  # now two keys are over: the first in order is reported
    assert await admin.check(keys, now=NOW) == RateCheck(False, "group", "7", 2, 1)


async def test_prune_deletes_only_old_rows(admin: AdminStore) -> None:
    await admin.record(NOW - 3 * 3600, ("user", "1"), ("group", "7"))
    await admin.record(NOW - 2 * 3600 - 1, ("user", "1"))
    await admin.record(NOW - 2 * 3600 + 1, ("user", "1"))
    await admin.record(NOW - 10, ("user", "1"))
    assert await admin.prune(now=NOW) == 3
    assert await admin.count("user", "1", now=NOW, window=10 * 3600) == 2
    assert await admin.count("group", "7", now=NOW, window=10 * 3600) == 0
    assert await admin.prune(now=NOW) == 0


# --- blacklist ----------------------------------------------------------------------------------


async def test_block_and_unblock_users_groups_and_members(admin: AdminStore) -> None:
    assert not admin.is_blocked("1") and not admin.is_blocked("1", "7")

    assert await admin.block("user", "1") is True
    assert await admin.block("user", "1") is False
    assert admin.is_blocked("1") and admin.is_blocked("1", "7")
    assert not admin.is_blocked("2", "7")

    assert await admin.block("group", "7") is True
    assert admin.is_blocked("2", "7")  # everyone in group 7
    assert not admin.is_blocked("2", "8") and not admin.is_blocked("2")

    assert await admin.block("member", member_target("9", "3")) is True
    assert admin.is_blocked("3", "9")
    assert not admin.is_blocked("3", "10")  # other groups
    assert not admin.is_blocked("3")  # private chat
    assert not admin.is_blocked("4", "9")  # others in that group

    assert await admin.blocked() == frozenset({("user", "1"), ("group", "7"), ("member", "9:3")})
    assert await admin.unblock("user", "1") is True
    assert await admin.unblock("user", "1") is False
    assert not admin.is_blocked("1") and admin.is_blocked("1", "7")  # still inside the blocked group
    assert await admin.unblock("group", "7") is True
    assert not admin.is_blocked("1", "7")


async def test_is_blocked_requires_load(history: SqlHistoryStore) -> None:
    store = AdminStore(history.engine)
    with pytest.raises(RuntimeError, match="load"):
        store.is_blocked("1")
    assert await store.block("user", "1") is True  # async methods load by themselves
    assert store.is_blocked("1")


async def test_state_survives_a_restart(database_url: str) -> None:
    url = database_url
    history = await SqlHistoryStore.open(url)
    admin = AdminStore(history.engine)
    await admin.load()
    await admin.set_limit("user", "default", 20)
    await admin.set_limit("group", "7", 3)
    await admin.block("member", "7:1")
    await admin.block("group", "9")
    await admin.record(NOW, ("group", "7"))
    await admin.close()
    await history.close()

    history = await SqlHistoryStore.open(url)
    try:
        admin = AdminStore(history.engine)
        await admin.load()
        assert admin.is_blocked("1", "7") and admin.is_blocked("5", "9") and not admin.is_blocked("1", "8")
        assert await admin.blocked() == frozenset({("member", "7:1"), ("group", "9")})
        assert await admin.limit_for("user", "anyone") == 20
        assert await admin.limit_for("group", "7") == 3
        assert await admin.count("group", "7", now=NOW) == 1
    finally:
        await history.close()


async def test_targets_compare_exactly(admin: AdminStore) -> None:
    # QQ official ids (openids) are case-sensitive; MariaDB's default collations are not.
    await admin.block("user", "AbC")
    await admin.set_limit("user", "XyZ", 0)
    await admin.record(NOW, ("user", "XyZ"), ("user", "XyZ"))
    other = AdminStore(admin._engine)  # what another process reads from the database
    await other.load()
    assert other.is_blocked("AbC") and not other.is_blocked("abc") and not other.is_blocked("ABC")
    assert await other.limit_for("user", "xyz") is None and await other.limit_for("user", "XyZ") == 0
    assert await other.count("user", "xyz", now=NOW) == 0 and await other.count("user", "XyZ", now=NOW) == 2
    assert await other.block("user", "abc") is True  # a different target, not a duplicate
    assert await other.unblock("user", "ABC") is False


async def test_setting_the_same_limit_twice_keeps_one_row(admin: AdminStore) -> None:
    # MySQL reports changed rows, not matched ones, unless asked otherwise: an unchanged UPDATE
    # must not be taken for a missing row.
    await admin.set_limit("group", "7", 5)
    await admin.set_limit("group", "7", 5)
    other = AdminStore(admin._engine)
    assert await other.limits() == {("group", "7"): 5}


async def test_a_block_made_elsewhere_is_seen_after_load(admin: AdminStore) -> None:
    other = AdminStore(admin._engine)  # another process, loaded before the block
    await other.load()
    assert await admin.block("member", "7:1") is True
    assert not other.is_blocked("1", "7")
    assert await other.block("member", "7:1") is False  # the database says it is there already
    assert other.is_blocked("1", "7")
    await other.load()
    assert await other.blocked() == frozenset({("member", "7:1")})


# --- failures and cancellation ------------------------------------------------------------------


async def test_database_errors_become_storage_errors(admin: AdminStore, history: SqlHistoryStore) -> None:
    async with history.engine.begin() as conn:
        await conn.execute(DropTable(usage))  # quoted: USAGE is a reserved word on MySQL
    with pytest.raises(StorageError, match=r"admin store: counting usage failed: .*usage") as raised:
        await admin.count("user", "1", now=NOW)
    assert "\n" not in str(raised.value)
    if history.engine.dialect.name == "sqlite":
        assert str(raised.value).endswith("no such table: usage")
    with pytest.raises(StorageError, match="recording usage"):
        await admin.record(NOW, ("user", "1"))


async def test_cancelled_caller_does_not_cut_a_write_short(admin: AdminStore) -> None:
    task = asyncio.create_task(admin.record(NOW, ("user", "1")))
    await asyncio.sleep(0)  # let it start its database work
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await admin.close()  # waits for the shielded write
    assert await admin.count("user", "1", now=NOW) == 1


async def test_admin_writes_interleave_with_history_writes(admin: AdminStore, history: SqlHistoryStore) -> None:
    # The history store holds its own connection; both write the same file concurrently.
    await asyncio.gather(
        *(history.append_exchange("s", f"q{i}", f"r{i}") for i in range(20)),
        *(admin.record(NOW, ("user", "1")) for _ in range(20)),
    )
    assert await admin.count("user", "1", now=NOW) == 20
    assert len(await history.window("s", 100_000)) == 40


# --- index and speed ----------------------------------------------------------------------------


async def test_window_counts_use_the_index(sqlite_history: SqlHistoryStore, tmp_path: Path) -> None:
    history = sqlite_history
    admin = AdminStore(history.engine)
    await admin.record(NOW, ("user", "1"))
    statement = admin._count_statement(3)  # what check() runs for user + group + member
    compiled = cast(SQLCompiler, statement.compile(dialect=history.engine.dialect))
    params = {"since": NOW - 3600, "s0": "user", "t0": "1", "s1": "group", "t1": "7", "s2": "member", "t2": "7:1"}
    args = [params[name] for name in compiled.positiontup or ()]
    with sqlite3.connect(db_path(tmp_path)) as raw:
        plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {compiled}", args)]
    searches = [line for line in plan if "usage" in line]
    assert len(searches) == 3, plan
    assert all("USING COVERING INDEX ix_usage_scope_target_at (scope=? AND target=? AND at>?)" in s for s in searches)
    assert not any(line.startswith("SCAN usage") for line in plan)


async def test_check_is_fast_with_10000_usage_rows(admin: AdminStore, history: SqlHistoryStore) -> None:
    keys = [("user", "1"), ("group", "7"), ("member", "7:1")]
    rows = [
        {"scope": scope, "target": target, "at": NOW - 7000 + i * 0.7}  # spread over two hours
        for i in range(10_000)
        for scope, target in [keys[i % 3]]
    ]
    async with history.engine.begin() as conn:
        await conn.execute(insert(usage), rows)
    for scope in ("user", "group", "member"):
        await admin.set_limit(scope, "default", 100_000)

    result = await admin.check(keys, now=NOW)  # warm the statement cache and the pool
    assert result.allowed and 1000 < result.used < 4000
    calls = 50
    started = time.perf_counter()
    for _ in range(calls):
        await admin.check(keys, now=NOW)
    per_call = (time.perf_counter() - started) / calls
    assert per_call < 0.005, f"{per_call * 1000:.2f} ms per check"


async def test_two_processes_setting_one_limit_leave_one_row(admin: AdminStore, database_url: str) -> None:
    other_history = await SqlHistoryStore.open(database_url)  # another process's engine
    try:
        other = AdminStore(other_history.engine)
        await asyncio.gather(*(store.set_limit("user", "1", n) for n in range(5) for store in (admin, other)))
        fresh = AdminStore(other_history.engine)
        limits = await fresh.limits()
        assert list(limits) == [("user", "1")] and limits[("user", "1")] in range(5)
        await other.close()
    finally:
        await other_history.close()


async def test_a_burst_cannot_take_more_than_the_limit(admin: AdminStore, history: SqlHistoryStore) -> None:
    # Checked and counted in one step: twenty messages at once from one sender, five allowed.
    await admin.set_limit("user", "default", 5)
    verdicts = await asyncio.gather(*(admin.take([("user", "42")]) for _ in range(20)))
    assert sum(v.allowed for v in verdicts) == 5 and await admin.count("user", "42") == 5
    refused = [v for v in verdicts if not v.allowed]
    assert all((v.used, v.limit) == (5, 5) for v in refused)
    # a group member's message counts for the group and the member together, or not at all
    await admin.set_limit("group", "7", 3)
    await admin.set_limit("member", member_target("7", "1"), 1)
    first = await admin.take([("group", "7"), ("member", member_target("7", "1"))])
    second = await admin.take([("group", "7"), ("member", member_target("7", "1"))])
    assert first.allowed and not second.allowed and second.scope == "member"
    assert await admin.count("group", "7") == 1  # the refused message was not counted for the group


async def test_two_processes_taking_at_once_stay_within_the_limit(database_url: str, history: SqlHistoryStore) -> None:
    # Two stores on their own engines, as two bot processes are: SQLite's single writer, PostgreSQL's
    # advisory locks and MySQL's named locks keep them exact.
    engines = [create_async_engine(database_url) for _ in range(2)]
    stores = [AdminStore(engine) for engine in engines]
    try:
        await stores[0].set_limit("user", "default", 6)
        await stores[1].load()
        verdicts = await asyncio.gather(*(stores[n % 2].take([("user", "99")]) for n in range(24)))
        assert sum(v.allowed for v in verdicts) == 6
        assert await stores[0].count("user", "99") == 6
    finally:
        for store in stores:
            await store.close()
        for engine in engines:
            await engine.dispose()
