"""The seen-events store: one contract for the database table and the in-memory fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from storage.seen import KEEP_SECONDS, MAX_KEY, MemorySeenEvents, SeenEvents, SqlSeenEvents, seen_events, seen_key
from storage.store import SqlHistoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlHistoryStore]:
    history = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
    yield history
    await history.close()


@pytest.fixture(params=["sql", "memory"])
async def make(request: pytest.FixtureRequest, store: SqlHistoryStore) -> Callable[[Clock], Any]:
    async def build(clock: Clock) -> SeenEvents:
        if request.param == "memory":
            return MemorySeenEvents(clock)
        return await SqlSeenEvents.open(store.engine, clock)

    return build


async def test_an_event_is_new_once_within_a_day(make: Any) -> None:
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


async def test_the_database_remembers_across_reopening(store: SqlHistoryStore, tmp_path: Path) -> None:
    clock = Clock()
    first = await SqlSeenEvents.open(store.engine, clock)
    assert await first.first_time("k")
    await first.close()
    await store.close()
    reopened = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
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
