"""Event ids seen in the last 24 hours, kept in the database so a replayed callback is ignored after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, cast

from loguru import logger
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from storage.errors import DB_ERRORS, failed, is_transient, retrieve_exception, short
from storage.models import MYSQL_TABLE, Base, UnixTime, key_string

__all__ = ["KEEP_SECONDS", "MemorySeenEvents", "SeenEvents", "SqlSeenEvents", "seen_key"]

KEEP_SECONDS = 24 * 3600.0  # the platform redelivers within minutes; a day covers any replay worth fearing
PRUNE_EVERY = 3600.0
MAX_KEY = 255
MEMORY_SIZE = 100_000
TRIES = 3  # attempts of one check when the database reports a deadlock or a lost link


class SeenEventRow(Base):
    """One event id and when it first arrived; rows older than a day are pruned."""

    __tablename__ = "seen_events"
    __table_args__ = MYSQL_TABLE

    key: Mapped[str] = mapped_column(key_string(MAX_KEY), primary_key=True)
    seen_at: Mapped[float] = mapped_column(UnixTime)


seen_events = cast(Table, SeenEventRow.__table__)


def seen_key(*parts: str) -> str:
    """One key from its parts, short enough for the column whatever the ids' lengths."""
    key = "|".join(parts)
    if len(key) <= MAX_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()


class SeenEvents(Protocol):
    """Remembers event ids for a day; `first_time` answers whether one is new."""

    async def first_time(self, key: str) -> bool:
        """Record `key`; False when it was already recorded in the last 24 hours."""
        ...

    async def close(self) -> None:
        """Finish pending work."""
        ...


class MemorySeenEvents:
    """SeenEvents in a bounded dict: forgotten when the process ends (tests, and the console)."""

    def __init__(self, clock: Callable[[], float] = time.time, size: int = MEMORY_SIZE) -> None:
        self.clock = clock
        self.size = size
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def first_time(self, key: str) -> bool:
        """Record `key`; False when it was already recorded in the last 24 hours."""
        now = self.clock()
        at = self._seen.get(key)
        if at is not None and now - at < KEEP_SECONDS:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True

    async def close(self) -> None:
        """Nothing to finish."""


class SqlSeenEvents:
    """SeenEvents in the history database (same engine and `Base`); open with `await SqlSeenEvents.open(engine)`.

    A database failure never makes the bot deaf: the event then counts as new (it is logged), since
    answering a rare replay twice is better than answering nothing.
    """

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self.clock = clock
        self._next_prune = 0.0
        self._unfinished: set[asyncio.Future[Any]] = set()
        dialect = engine.dialect.name
        self._upsert: Any = None
        if dialect in ("sqlite", "postgresql"):
            dialect_insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
            statement = dialect_insert(seen_events)
            # A row older than the window counts as new again: it is renewed instead of blocking.
            self._upsert = statement.on_conflict_do_update(
                index_elements=[seen_events.c.key],
                set_={"seen_at": statement.excluded.seen_at},
                where=seen_events.c.seen_at < statement.excluded.seen_at - KEEP_SECONDS,
            )
        # MySQL/MariaDB: INSERT IGNORE says by its rowcount whether the key was new, without the
        # savepoint a duplicate would otherwise need (a deadlock there drops the savepoint too).
        self._insert_ignore: Any = None
        if dialect in ("mysql", "mariadb"):
            self._insert_ignore = insert(seen_events).prefix_with("IGNORE")

    @classmethod
    async def open(cls, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> SqlSeenEvents:
        """Create the table when missing. Raises StorageError."""
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: seen_events.create(sync, checkfirst=True))
        except DB_ERRORS as exc:
            raise failed("seen events", "creating the table", exc) from exc
        return cls(engine, clock)

    async def first_time(self, key: str) -> bool:
        """Record `key`; False when it was already recorded in the last 24 hours. Never raises."""
        # The statement runs to its end even if the caller is cancelled (see storage/admin.py: a
        # cancelled aiosqlite statement can leave the write lock taken).
        task = asyncio.ensure_future(self._first_time(key))
        self._unfinished.add(task)
        task.add_done_callback(self._unfinished.discard)
        task.add_done_callback(retrieve_exception)
        return await asyncio.shield(task)

    async def _first_time(self, key: str) -> bool:
        key = seen_key(key)  # a longer key would not fit the column
        for attempt in range(1, TRIES + 1):
            try:
                return await self._check(key, self.clock())
            except DB_ERRORS as exc:
                # Two processes checking one id can deadlock on a server database: the loser's
                # transaction is rolled back whole, and trying again gives the right answer.
                if attempt < TRIES and is_transient(exc):
                    continue
                logger.warning("seen events: could not check an event id ({}); treating it as new", short(exc))
        return True

    async def _check(self, key: str, now: float) -> bool:
        async with self._engine.begin() as conn:
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                await conn.execute(delete(seen_events).where(seen_events.c.seen_at < now - KEEP_SECONDS))
            if self._upsert is not None:
                result = await conn.execute(self._upsert, {"key": key, "seen_at": now})
                return bool(result.rowcount)
            if self._insert_ignore is not None:
                inserted = await conn.execute(self._insert_ignore, {"key": key, "seen_at": now})
                return bool(inserted.rowcount) or await self._renew(conn, key, now)
            return await self._portable_first_time(conn, key, now)

    @staticmethod
    async def _portable_first_time(conn: Any, key: str, now: float) -> bool:
        """Insert-or-renew for dialects with neither ON CONFLICT nor INSERT IGNORE."""
        c = seen_events.c
        at = (await conn.execute(select(c.seen_at).where(c.key == key))).scalar_one_or_none()
        if at is None:
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(seen_events).values(key=key, seen_at=now))
            except IntegrityError:  # another process recorded it meanwhile
                return False
            return True
        if now - at < KEEP_SECONDS:
            return False
        return await SqlSeenEvents._renew(conn, key, now)

    @staticmethod
    async def _renew(conn: Any, key: str, now: float) -> bool:
        """Renew the key's row if it is older than the window: then the event counts as new.

        Of two processes renewing at once, one wins. rowcount is the matched rows (FOUND_ROWS on
        MySQL), and a row matched here is always changed."""
        c = seen_events.c
        renewed = await conn.execute(
            update(seen_events).where(c.key == key, c.seen_at < now - KEEP_SECONDS).values(seen_at=now)
        )
        return bool(renewed.rowcount)

    async def close(self) -> None:
        """Wait for checks still running; call before closing the history store."""
        if self._unfinished:
            await asyncio.gather(*self._unfinished, return_exceptions=True)
