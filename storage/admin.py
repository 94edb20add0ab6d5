"""Admin state in the database: hourly rate limits, usage counting and the blacklist."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import (
    BindParameter,
    Index,
    Integer,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import Executable

from core.errors import StorageError
from storage.errors import DB_ERRORS, failed, retrieve_exception
from storage.models import MYSQL_TABLE, Base, Id, UnixTime, key_string

__all__ = ["DEFAULT", "DRAW", "SCOPES", "TOOL", "AdminStore", "RateCheck", "member_target"]

SCOPES = frozenset({"user", "group", "member"})
# Drawing has its own limits and usage (v2's 画图额度): the same scopes with this prefix, e.g. "draw_group".
DRAW = "draw_"
# Tool calls ([tools]) likewise, e.g. "tool_group"; a limit of 0 switches tools off there.
TOOL = "tool_"
DEFAULT = "default"  # the target whose limit applies to every target of its scope without its own row
HOUR = 3600.0
LOCK_WAIT_SECONDS = 10  # MySQL/MariaDB: how long a take waits for another process's take of the same key
COUNT_BATCH = 100  # keys per window-count statement: two bound parameters each, far below any limit


class RateLimitRow(Base):
    """An admin-set limit of messages per hour for one target, or for the scope's "default"."""

    __tablename__ = "rate_limits"
    __table_args__ = MYSQL_TABLE

    scope: Mapped[str] = mapped_column(key_string(16), primary_key=True)
    target: Mapped[str] = mapped_column(key_string(), primary_key=True)
    limit_per_hour: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(UnixTime)


class UsageRow(Base):
    """One counted message of one key; only the last hours matter and `prune` deletes the rest."""

    __tablename__ = "usage"
    # A window count is a range of this index (covering: the table itself is never read).
    __table_args__ = (Index("ix_usage_scope_target_at", "scope", "target", "at"), MYSQL_TABLE)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(key_string(16))
    target: Mapped[str] = mapped_column(key_string())  # member: "group_id:user_id"
    at: Mapped[float] = mapped_column(UnixTime)


class BlacklistRow(Base):
    """A blocked user, group, or user inside one group."""

    __tablename__ = "blacklist"
    __table_args__ = MYSQL_TABLE

    scope: Mapped[str] = mapped_column(key_string(16), primary_key=True)
    target: Mapped[str] = mapped_column(key_string(), primary_key=True)
    created_at: Mapped[float] = mapped_column(UnixTime)


rate_limits = cast(Table, RateLimitRow.__table__)
usage = cast(Table, UsageRow.__table__)
blacklist = cast(Table, BlacklistRow.__table__)


def _limit_upsert(dialect: str, values: dict[str, Any]) -> Executable | None:
    """Insert-or-replace of one rate_limits row in the dialect's own words; None when it has none."""
    changed = ("limit_per_hour", "updated_at")
    if dialect in ("sqlite", "postgresql"):
        stmt = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(rate_limits).values(values)
        return stmt.on_conflict_do_update(
            index_elements=[rate_limits.c.scope, rate_limits.c.target],
            set_={name: stmt.excluded[name] for name in changed},
        )
    if dialect in ("mysql", "mariadb"):
        mysql_stmt = mysql.insert(rate_limits).values(values)
        return mysql_stmt.on_duplicate_key_update({name: mysql_stmt.inserted[name] for name in changed})
    return None


def _failed(action: str, exc: BaseException) -> StorageError:
    return failed("admin store", action, exc)


def member_target(group_id: str, user_id: str) -> str:
    """The target naming one user inside one group."""
    return f"{group_id}:{user_id}"


def _key(scope: str, target: str, *, default_ok: bool = False) -> tuple[str, str]:
    """Validated (scope, target); ValueError names what is wrong."""
    base = scope.removeprefix(DRAW).removeprefix(TOOL) if isinstance(scope, str) else scope
    if base not in SCOPES:
        raise ValueError(
            f"unknown scope {scope!r}; expected one of: group, member, user (each also with {DRAW!r} or {TOOL!r})"
        )
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be a non-empty string, got {target!r}")
    if target == DEFAULT:
        if not default_ok:
            raise ValueError(f"{DEFAULT!r} names the default limit, not a {scope}")
    elif base == "member":
        group_id, _, user_id = target.partition(":")
        if not group_id or not user_id:
            raise ValueError(f"member target must be 'group_id:user_id', got {target!r}")
    return scope, target


@dataclass(frozen=True, slots=True)
class RateCheck:
    """Outcome of `AdminStore.check` for its most constraining key.

    `limit` None means no key had a limit; `used` is then 0 because nothing was counted.
    """

    allowed: bool
    scope: str
    target: str
    used: int
    limit: int | None


def _count_params(keys: list[tuple[str, str]], since: float) -> dict[str, Any]:
    """The bind parameters of `_count_statement(len(keys))`."""
    params: dict[str, Any] = {"since": since}
    for i, (scope, target) in enumerate(keys):
        params[f"s{i}"] = scope
        params[f"t{i}"] = target
    return params


def _verdict(limited: list[tuple[tuple[str, str], int]], counts: list[int]) -> RateCheck:
    """The first key at or over its limit, else the key with the fewest messages left."""
    best: RateCheck | None = None
    for ((scope, target), limit), used in zip(limited, counts, strict=True):
        if used >= limit:
            return RateCheck(False, scope, target, used, limit)
        if best is None or limit - used < cast(int, best.limit) - best.used:
            best = RateCheck(True, scope, target, used, limit)
    return cast(RateCheck, best)


_P = ParamSpec("_P")
_T = TypeVar("_T")


class AdminStore:
    """Rate limits, usage and blacklist in the history database; `await load()` once before use.

    Limits: a target's own row wins, else its scope's "default" row; with neither the target is
    unlimited. A limit of 0 lets nobody chat (v2 semantics). Limits and the blacklist are small
    and read for every message, so both tables are held in memory whole: `load()` fills them,
    and set_limit / clear_limit / block / unblock update them after their commit. Async methods
    load on first use by themselves; the sync `is_blocked` cannot and raises until `load()` ran.
    Changes made to these tables by another process are seen after the next `load()`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._limits: dict[tuple[str, str], int] = {}
        self._blocked: frozenset[tuple[str, str]] = frozenset()
        self._loaded = False
        self._lock = asyncio.Lock()  # orders loads and admin writes so the caches follow commit order
        # One check-and-record at a time in this process; PostgreSQL advisory locks do it across processes.
        self._taking = asyncio.Lock()
        self._unfinished: set[asyncio.Future[Any]] = set()  # shielded operations still running
        self._counts: dict[int, Select[Any]] = {}  # window count statement per number of keys
        self._prune = delete(usage).where(usage.c.at < bindparam("before"))

    # --- plumbing ---------------------------------------------------------------------------

    async def _run(
        self, action: str, work: Callable[_P, Coroutine[Any, Any, _T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run database work to its end even if the caller is cancelled; wrap database errors.

        A statement cancelled under SQLAlchemy's asyncio adapter ends in a terminated connection
        rather than a rollback, and with aiosqlite the write lock was seen to stay taken (see
        storage/store.py): so the work runs in its own task and the caller only stops waiting.
        """

        async def guarded() -> _T:
            try:
                return await work(*args, **kwargs)
            except DB_ERRORS as exc:
                raise _failed(action, exc) from exc

        task = asyncio.ensure_future(guarded())
        self._unfinished.add(task)
        task.add_done_callback(self._unfinished.discard)
        task.add_done_callback(retrieve_exception)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Wait for operations still running; call before closing the history store."""
        if self._unfinished:
            await asyncio.gather(*self._unfinished, return_exceptions=True)

    def _count_statement(self, n: int) -> Select[Any]:
        """One SELECT of n window counts: one round trip whatever the number of keys."""
        statement = self._counts.get(n)
        if statement is None:
            u = usage.c
            since: BindParameter[float] = bindparam("since")
            statement = select(
                *(
                    select(func.count())
                    .select_from(usage)
                    .where(u.scope == bindparam(f"s{i}"), u.target == bindparam(f"t{i}"), u.at > since)
                    .scalar_subquery()
                    for i in range(n)
                )
            )
            self._counts[n] = statement
        return statement

    async def _count_keys(self, keys: list[tuple[str, str]], since: float) -> list[int]:
        params = _count_params(keys, since)
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._count_statement(len(keys)), params)).one()
        return [int(n) for n in row]

    # --- caches -------------------------------------------------------------------------------

    async def load(self) -> None:
        """(Re)read limits and blacklist into memory. Raises StorageError."""
        await self._run("loading limits and blacklist", self._load)

    async def _load(self) -> None:
        async with self._lock, self._engine.connect() as conn:
            await self._fill(conn)

    async def _fill(self, conn: AsyncConnection) -> None:
        limits = await conn.execute(select(rate_limits.c.scope, rate_limits.c.target, rate_limits.c.limit_per_hour))
        self._limits = {(scope, target): int(n) for scope, target, n in limits}
        rows = await conn.execute(select(blacklist.c.scope, blacklist.c.target))
        self._blocked = frozenset((scope, target) for scope, target in rows)
        self._loaded = True

    async def _ensure_loaded(self) -> None:
        if not self._loaded:  # no await (so no task switch) once loaded: this runs per message
            await self.load()

    # --- limits -------------------------------------------------------------------------------

    async def set_limit(self, scope: str, target: str, per_hour: int) -> None:
        """Allow `per_hour` messages per sliding hour; target "default" sets the scope's default.

        0 blocks the target from chatting. Raises ValueError for a bad scope / target / number,
        StorageError on database failure.
        """
        key = _key(scope, target, default_ok=True)
        if isinstance(per_hour, bool) or not isinstance(per_hour, int) or per_hour < 0:
            raise ValueError(f"limit must be a whole number >= 0, got {per_hour!r}")
        await self._ensure_loaded()
        await self._run("setting a limit", self._set_limit, key, per_hour)

    async def _set_limit(self, key: tuple[str, str], per_hour: int) -> None:
        scope, target = key
        c = rate_limits.c
        values = {"scope": scope, "target": target, "limit_per_hour": per_hour, "updated_at": time.time()}
        async with self._lock:
            async with self._engine.begin() as conn:
                native = _limit_upsert(conn.dialect.name, values)
                if native is not None:  # one statement: also race-free between processes
                    await conn.execute(native)
                else:
                    # Update-then-insert; rowcount counts matched rows (SQLAlchemy asks MySQL
                    # drivers for FOUND_ROWS), and the lock makes it race-free in-process.
                    changed = await conn.execute(
                        update(rate_limits)
                        .where(c.scope == scope, c.target == target)
                        .values(limit_per_hour=per_hour, updated_at=values["updated_at"])
                    )
                    if changed.rowcount == 0:
                        await conn.execute(insert(rate_limits).values(values))
            self._limits[key] = per_hour

    async def clear_limit(self, scope: str, target: str) -> bool:
        """Remove a limit (then the default, or nothing, applies); False if there was none."""
        key = _key(scope, target, default_ok=True)
        await self._ensure_loaded()
        return await self._run("removing a limit", self._clear_limit, key)

    async def _clear_limit(self, key: tuple[str, str]) -> bool:
        c = rate_limits.c
        async with self._lock:
            async with self._engine.begin() as conn:
                gone = await conn.execute(delete(rate_limits).where(c.scope == key[0], c.target == key[1]))
            self._limits.pop(key, None)
        return gone.rowcount > 0

    def _limit(self, key: tuple[str, str]) -> int | None:
        limits = self._limits
        own = limits.get(key)
        return own if own is not None else limits.get((key[0], DEFAULT))

    async def limit_for(self, scope: str, target: str) -> int | None:
        """The target's own limit, else its scope's default, else None (unlimited); from memory."""
        key = _key(scope, target, default_ok=True)
        await self._ensure_loaded()
        return self._limit(key)

    async def limits(self) -> dict[tuple[str, str], int]:
        """Every limit row, (scope, target) -> messages per hour, from memory (a copy)."""
        await self._ensure_loaded()
        return dict(self._limits)

    # --- usage --------------------------------------------------------------------------------

    async def record(self, now: float | None, *keys: tuple[str, str]) -> None:
        """Count one message for each (scope, target) key, in one transaction."""
        checked = [_key(scope, target) for scope, target in keys]
        if not checked:
            return
        at = time.time() if now is None else now
        rows = [{"scope": scope, "target": target, "at": at} for scope, target in checked]
        await self._run("recording usage", self._record, rows)

    async def _record(self, rows: list[dict[str, Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(usage), rows)  # executemany

    async def count(self, scope: str, target: str, now: float | None = None, window: float = HOUR) -> int:
        """Messages counted for the key in (now - window, ...]: an index range, not a scan."""
        key = _key(scope, target)
        since = (time.time() if now is None else now) - window
        counts = await self._run("counting usage", self._count_keys, [key], since)
        return counts[0]

    async def counts(
        self, keys: Iterable[tuple[str, str]], now: float | None = None, window: float = HOUR
    ) -> dict[tuple[str, str], int]:
        """Messages counted for each key in (now - window, ...], a few round trips for any number of
        keys. Raises ValueError for a bad key, StorageError on database failure."""
        checked = list(dict.fromkeys(_key(scope, target) for scope, target in keys))
        since = (time.time() if now is None else now) - window
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(checked), COUNT_BATCH):
            batch = checked[start : start + COUNT_BATCH]
            counts = await self._run("counting usage", self._count_keys, batch, since)
            found.update(zip(batch, counts, strict=True))
        return found

    async def busiest(
        self, now: float | None = None, window: float = HOUR, most: int = 200
    ) -> list[tuple[str, str, int]]:
        """The `most` keys with the most messages counted in (now - window, ...], as
        (scope, target, count), most first. Raises StorageError on database failure."""
        since = (time.time() if now is None else now) - window
        return await self._run("reading usage", self._busiest, since, most)

    async def _busiest(self, since: float, most: int) -> list[tuple[str, str, int]]:
        u = usage.c
        used = func.count().label("used")
        statement = (
            select(u.scope, u.target, used)
            .where(u.at > since)
            .group_by(u.scope, u.target)
            .order_by(used.desc(), u.scope, u.target)
            .limit(most)
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(statement)
        return [(scope, target, int(n)) for scope, target, n in rows]

    async def _limited(
        self, keys: Iterable[tuple[str, str]]
    ) -> tuple[list[tuple[tuple[str, str], int]], RateCheck | None]:
        """The keys that have a limit, with it; and the verdict at once when none has (allowed, not counted)."""
        checked = [_key(scope, target) for scope, target in keys]
        await self._ensure_loaded()
        limited = [(key, limit) for key in checked if (limit := self._limit(key)) is not None]
        if limited:
            return limited, None
        scope, target = checked[0] if checked else ("", "")
        return [], RateCheck(True, scope, target, 0, None)

    async def take_for_sender(self, prefix: str, user_id: str, group_id: str = "") -> RateCheck | None:
        """`take` for one sender against the limits of `prefix` ("" messages, DRAW pictures, TOOL tool
        calls): in a group (`group_id`) the group's and the member's, else the user's. None when no
        limit applies: then nothing is counted and no database work is done. Raises StorageError."""
        if group_id:
            keys = [(prefix + "group", group_id), (prefix + "member", member_target(group_id, user_id))]
        else:
            keys = [(prefix + "user", user_id)]
        limited = [key for key in keys if await self.limit_for(*key) is not None]
        return await self.take(limited) if limited else None

    async def take(self, keys: Iterable[tuple[str, str]], now: float | None = None) -> RateCheck:
        """`check`, and when allowed `record`, as one step: two messages of one sender can never both
        take the last one of a limit. Atomic within this process, and across processes: SQLite's write
        lock, PostgreSQL's advisory locks, MySQL's named locks. Raises StorageError."""
        limited, unlimited = await self._limited(keys)
        if unlimited is not None:
            return unlimited
        at = time.time() if now is None else now
        async with self._taking:
            return await self._run("checking and counting usage", self._take, limited, at)

    async def _take(self, limited: list[tuple[tuple[str, str], int]], at: float) -> RateCheck:
        keys = [key for key, _ in limited]
        params = _count_params(keys, at - HOUR)
        rows = [{"scope": scope, "target": target, "at": at} for scope, target in keys]
        dialect = self._engine.dialect.name
        async with self._engine.connect() as conn:
            try:
                async with conn.begin() as transaction:
                    # One order everywhere, so two processes never wait for each other's second key.
                    for scope, target in sorted(keys):
                        name = f"{scope}|{target}"
                        if dialect == "postgresql":  # released by the transaction's end
                            await conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(name, 0))))
                        elif dialect in ("mysql", "mariadb"):  # held by the connection until released below
                            await conn.execute(select(func.get_lock(f"qqbot-usage:{name}"[:64], LOCK_WAIT_SECONDS)))
                    # The rows go in first, then the count: on SQLite the insert takes the database's
                    # write lock, so another process's take waits for this one and then counts its rows.
                    await conn.execute(insert(usage), rows)
                    counted = (await conn.execute(self._count_statement(len(keys)), params)).one()
                    verdict = _verdict(limited, [int(n) - 1 for n in counted])  # without this message's own row
                    if not verdict.allowed:
                        await transaction.rollback()
            finally:
                if dialect in ("mysql", "mariadb"):
                    await conn.execute(select(func.release_all_locks()))
                    await conn.commit()
        return verdict

    async def check(self, keys: Iterable[tuple[str, str]], now: float | None = None) -> RateCheck:
        """Whether one more message is allowed for all keys, judged by the last hour's usage.

        Reports the first key (in the given order) at or over its limit, else the key with the
        fewest messages left. Keys without a limit are not counted; if no key has one, the result
        is allowed with limit None and the first key (or empty strings when there is none).
        """
        limited, unlimited = await self._limited(keys)
        if unlimited is not None:
            return unlimited
        since = (time.time() if now is None else now) - HOUR
        counts = await self._run("checking limits", self._count_keys, [key for key, _ in limited], since)
        return _verdict(limited, counts)

    async def prune(self, now: float | None = None, keep: float = 2 * HOUR) -> int:
        """Delete usage rows older than `keep` seconds; returns how many went.

        Scans the table (no index on `at` alone): run hourly the table only holds about two
        hours of messages, and an extra index would cost every record() a write.
        """
        before = (time.time() if now is None else now) - keep
        return await self._run("pruning usage", self._prune_rows, before)

    async def _prune_rows(self, before: float) -> int:
        async with self._engine.begin() as conn:
            return int((await conn.execute(self._prune, {"before": before})).rowcount)

    # --- blacklist ----------------------------------------------------------------------------

    async def block(self, scope: str, target: str) -> bool:
        """Blacklist a user, group or member ("group_id:user_id"); False if already blocked."""
        key = _key(scope, target)
        await self._ensure_loaded()
        return await self._run("blocking", self._block, key)

    async def _block(self, key: tuple[str, str]) -> bool:
        async with self._lock:
            if key in self._blocked:
                return False
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(insert(blacklist).values(scope=key[0], target=key[1], created_at=time.time()))
                added = True
            except IntegrityError:  # another process blocked it since our load
                added = False
            self._blocked = self._blocked | {key}
        return added

    async def unblock(self, scope: str, target: str) -> bool:
        """Remove a blacklist entry; False if it was not blocked."""
        key = _key(scope, target)
        await self._ensure_loaded()
        return await self._run("unblocking", self._unblock, key)

    async def _unblock(self, key: tuple[str, str]) -> bool:
        c = blacklist.c
        async with self._lock:
            async with self._engine.begin() as conn:
                gone = await conn.execute(delete(blacklist).where(c.scope == key[0], c.target == key[1]))
            self._blocked = self._blocked - {key}
        return gone.rowcount > 0

    async def blocked(self) -> frozenset[tuple[str, str]]:
        """Every blacklist entry as (scope, target)."""
        await self._ensure_loaded()
        return self._blocked

    def is_blocked(self, user_id: str, group_id: str = "") -> bool:
        """Whether a message from `user_id` (in `group_id`, "" for private chat) must be ignored.

        A few set lookups in memory; raises RuntimeError if `load()` has not been awaited.
        """
        if not self._loaded:
            raise RuntimeError("AdminStore.is_blocked called before `await load()`")
        blocked = self._blocked
        if ("user", user_id) in blocked:
            return True
        return bool(group_id) and (("group", group_id) in blocked or ("member", f"{group_id}:{user_id}") in blocked)
