"""The seen-events store: one contract for the database table (SQLite, PostgreSQL, MariaDB) and the
in-memory fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from storage.seen import KEEP_SECONDS, MAX_KEY, MemorySeenEvents, SeenEvents, SqlSeenEvents, seen_events, seen_key
from storage.store import SqlHistoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


pytest_plugins = ("tests.dbservers",)

# The servers are real ones started by tests/dbservers.py.
DATABASES = ["sqlite", "postgresql", "mariadb"]
SERVER_URL_FIXTURES = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}


def url_for(request: pytest.FixtureRequest, database: str, tmp_path: Path) -> str:
    if database in SERVER_URL_FIXTURES:
        return str(request.getfixturevalue(SERVER_URL_FIXTURES[database]))
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request, request.param, tmp_path)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlHistoryStore]:
    history = await SqlHistoryStore.open(database_url)
    yield history
    await history.close()


Build = Callable[[Clock], Awaitable[SeenEvents]]


@pytest.fixture(params=[*DATABASES, "memory"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Build]:
    if request.param == "memory":

        async def in_memory(clock: Clock) -> SeenEvents:
            return MemorySeenEvents(clock)

        yield in_memory
        return
    history = await SqlHistoryStore.open(url_for(request, request.param, tmp_path))

    async def in_database(clock: Clock) -> SeenEvents:
        return await SqlSeenEvents.open(history.engine, clock)

    yield in_database
    await history.close()


async def test_an_event_is_new_once_within_a_day(make: Build) -> None:
    clock = Clock()
    seen = await make(clock)
    assert await seen.first_time("qqbot|private|U1|M1")
    assert not await seen.first_time("qqbot|private|U1|M1")
    assert await seen.first_time("qqbot|private|U1|M2")
    clock.now += KEEP_SECONDS - 1
    assert not await seen.first_time("qqbot|private|U1|M1")
    clock.now += 2
    assert await seen.first_time("qqbot|private|U1|M1")  # a day later it counts as new, and is renewed
    assert not await seen.first_time("qqbot|private|U1|M1")
    await seen.close()


async def test_the_database_remembers_across_reopening(store: SqlHistoryStore, database_url: str) -> None:
    clock = Clock()
    first = await SqlSeenEvents.open(store.engine, clock)
    assert await first.first_time("k")
    await first.close()
    await store.close()
    reopened = await SqlHistoryStore.open(database_url)
    try:
        again = await SqlSeenEvents.open(reopened.engine, clock)
        assert not await again.first_time("k")
    finally:
        await reopened.close()


async def test_rows_older_than_a_day_are_pruned(store: SqlHistoryStore) -> None:
    clock = Clock()
    seen = await SqlSeenEvents.open(store.engine, clock)
    for n in range(5):
        assert await seen.first_time(f"old-{n}")
    clock.now += KEEP_SECONDS + 3600  # past the day and past the next prune time
    assert await seen.first_time("new")
    async with store.engine.connect() as conn:
        keys = (await conn.execute(select(seen_events.c.key))).scalars().all()
    assert keys == ["new"]


async def test_a_database_failure_counts_the_event_as_new(store: SqlHistoryStore, log_lines: list[str]) -> None:
    seen = await SqlSeenEvents.open(store.engine)
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE seen_events"))
    assert await seen.first_time("k")  # answering a rare replay twice beats going deaf
    assert any("seen events" in line and "treating it as new" in line for line in log_lines)


async def test_long_keys_fit_the_column(store: SqlHistoryStore) -> None:
    long = seen_key("qqbot", "group", "G" * 300, "M" * 300)
    assert len(long) <= MAX_KEY and long != seen_key("qqbot", "group", "G" * 300, "M" * 299)
    assert seen_key("qqbot", "private", "U1", "M1") == "qqbot|private|U1|M1"
    seen = await SqlSeenEvents.open(store.engine)
    assert await seen.first_time(long) and not await seen.first_time(long)
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(seen_events))).scalar() == 1


async def test_one_event_is_new_once_across_processes(store: SqlHistoryStore, database_url: str) -> None:
    # Two engines stand for two bot processes sharing the database; each hears the same redelivery.
    other = await SqlHistoryStore.open(database_url)
    try:
        clock = Clock()
        here = await SqlSeenEvents.open(store.engine, clock)
        there = await SqlSeenEvents.open(other.engine, clock)
        keys = [f"qqbot|group|G1|M{n}" for n in range(10)]
        answers = await asyncio.gather(*(seen.first_time(key) for key in keys for seen in (here, there)))
        assert sum(answers) == len(keys)  # each key new exactly once
        assert not any(await asyncio.gather(*(seen.first_time(key) for key in keys for seen in (here, there))))
    finally:
        await other.close()
