"""Conversation history in any SQLAlchemy async database (SQLite in WAL mode by default)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from loguru import logger
from sqlalchemy import (
    BindParameter,
    Table,
    bindparam,
    case,
    delete,
    event,
    false,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, ColumnElement, Executable

import storage.admin  # noqa: F401  (registers the admin tables on Base before they are created)
from core.backoff import Backoff
from core.errors import StorageError
from storage.base import (
    TOOL_ROLE,
    WINDOW_PAGE,
    HistoryStore,
    SessionState,
    StoredTool,
    StoredTurn,
    check_session_fields,
    exchange_rows,
    fill_window,
    finish_window,
    last_exchange_length,
    reset_marker_row,
)
from storage.errors import (
    DB_ERRORS,
    DatabaseNotWritable,
    failed,
    is_lock_wait,
    is_transient,
    needs_reopen,
    not_writable,
    not_writable_detail,
    retrieve_exception,
    short,
)
from storage.models import messages, sessions
from storage.schema import create_or_upgrade

__all__ = [
    "DatabaseNotWritable",
    "HistoryStore",
    "RetryPolicy",
    "SessionState",
    "SqlHistoryStore",
    "StoredTool",
    "StoredTurn",
]

# WAL lets readers run beside the writer; synchronous=NORMAL under WAL means a commit does not
# wait for fsync (a power cut may lose the last commits, never corrupts the file); busy_timeout
# makes another connection's write lock a short wait instead of an error.
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)
# The fast path's connections wait only this long for a lock held by another process: the wait
# happens while the store's lock is held, so the rest of the wait is done by the retry loop with
# the lock released, and other sessions' work goes on between tries.
_HELD_BUSY_TIMEOUT_MS = 250
# The row the start-up check writes and deletes; no session key has this shape.
_WRITE_CHECK_KEY = "storage:write-check"
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")
_MYSQL_FAMILY = ("mysql", "mariadb")


def _redact(url: str) -> str:
    """The URL with any password replaced, for messages; works on URLs SQLAlchemy cannot parse."""
    return _PASSWORD_IN_URL.sub(r"\1***@", url)


def _failed(action: str, exc: BaseException) -> StorageError:
    return failed("history store", action, exc)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a failing operation keeps trying: capped, jittered backoff within `budget` seconds."""

    budget: float = 3.0
    min_delay: float = 0.05
    max_delay: float = 0.8

    def backoff(self) -> Backoff:
        """A fresh schedule for one operation."""
        return Backoff(min_delay=self.min_delay, max_delay=self.max_delay)


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _finish_even_if_cancelled(
    method: Callable[Concatenate[SqlHistoryStore, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SqlHistoryStore, _P], Coroutine[Any, Any, _T]]:
    """Let an operation on the SQLAlchemy path run to its end when its caller is cancelled.

    A statement cancelled under SQLAlchemy's asyncio adapter ends in a terminated connection, not
    a rollback; with aiosqlite the write lock was seen to stay taken afterwards, so every later
    write waited busy_timeout and failed. The aiosqlite fast path needs no shield: its worker runs
    queued calls in order, so the rollback queued on cancellation always lands.
    """

    @functools.wraps(method)
    async def run(store: SqlHistoryStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if store._writer is not None:
            return await method(store, *args, **kwargs)
        task = asyncio.ensure_future(method(store, *args, **kwargs))
        store._unfinished.add(task)  # close() waits for these
        task.add_done_callback(store._unfinished.discard)
        task.add_done_callback(retrieve_exception)  # failures were logged by _failed already
        return await asyncio.shield(task)

    return run


class _Statement:
    """A Core statement and, for the aiosqlite fast path, its SQL text and positional parameters."""

    __slots__ = ("clause", "fixed", "order", "sql")

    def __init__(self, clause: Executable, dialect: Dialect | None) -> None:
        self.clause = clause
        self.sql = ""
        self.order: tuple[str, ...] = ()
        self.fixed: dict[str, Any] = {}
        if dialect is not None:
            compiled = cast(SQLCompiler, cast(ClauseElement, clause).compile(dialect=dialect))
            self.sql = str(compiled)
            self.order = tuple(compiled.positiontup or ())
            # Literals the statement carries itself (LIMIT 64, coalesce's 0) as bound values.
            self.fixed = {name: value for name, value in compiled.params.items() if value is not None}

    def args(self, params: dict[str, Any]) -> tuple[Any, ...]:
        """Positional values in the order of the `?` marks."""
        fixed = self.fixed
        return tuple(params[name] if name in params else fixed[name] for name in self.order)


class _Tx(Protocol):
    """Statement execution inside one reading or writing block."""

    async def fetch(self, statement: _Statement, params: dict[str, Any]) -> Sequence[Sequence[Any]]: ...

    async def execute(self, statement: _Statement, params: dict[str, Any]) -> int: ...

    async def execute_many(self, statement: _Statement, rows: list[dict[str, Any]]) -> None: ...


class _AlchemyTx:
    """Runs statements through SQLAlchemy: any dialect, about four driver calls per statement."""

    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def fetch(self, statement: _Statement, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return (await self._conn.execute(statement.clause, params)).all()

    async def execute(self, statement: _Statement, params: dict[str, Any]) -> int:
        return (await self._conn.execute(statement.clause, params)).rowcount

    async def execute_many(self, statement: _Statement, rows: list[dict[str, Any]]) -> None:
        await self._conn.execute(statement.clause, rows)


class _AiosqliteTx:
    """Runs pre-compiled SQL on the aiosqlite connection: one worker-thread hop per statement.

    SQLAlchemy's adapter spends four hops per statement (cursor, execute, fetch, close), and each
    hop costs ~30 µs of CPU in thread hand-offs: this path makes a message's storage work about
    five times cheaper.
    """

    __slots__ = ("_driver",)

    def __init__(self, driver: Any) -> None:
        self._driver = driver  # aiosqlite.Connection

    async def fetch(self, statement: _Statement, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await self._driver.execute_fetchall(statement.sql, statement.args(params))
        return rows

    async def execute(self, statement: _Statement, params: dict[str, Any]) -> int:
        cursor = await self._driver.execute(statement.sql, statement.args(params))
        count: int = cursor.rowcount
        return count

    async def execute_many(self, statement: _Statement, rows: list[dict[str, Any]]) -> None:
        await self._driver.executemany(statement.sql, [statement.args(row) for row in rows])


class _Held:
    """A connection the aiosqlite fast path keeps open, and whether it must be replaced before use."""

    __slots__ = ("broken", "conn", "driver")

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self.conn = conn
        self.driver = driver  # aiosqlite.Connection
        self.broken = False

    @classmethod
    async def connect(cls, engine: AsyncEngine) -> _Held:
        conn = await engine.connect()
        try:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.execute_fetchall(f"PRAGMA busy_timeout={_HELD_BUSY_TIMEOUT_MS}")
        except BaseException:
            await conn.invalidate()
            raise
        return cls(conn, driver)

    async def reopen(self, engine: AsyncEngine) -> None:
        """Swap in a new connection (the caller holds this connection's lock); the old one is discarded."""
        fresh = await _Held.connect(engine)
        old = self.conn
        self.conn, self.driver, self.broken = fresh.conn, fresh.driver, False
        try:
            await old.invalidate()  # not back into the pool: it is the broken one
        except Exception as exc:  # already dead: nothing left to release
            logger.debug("history store: discarding a broken connection: {!r}", exc)
        logger.info("history store: reopened a database connection")


class _SessionUpsert:
    """Insert-or-update of one sessions row: native ON CONFLICT (SQLite, PostgreSQL) or
    ON DUPLICATE KEY UPDATE (MySQL, MariaDB); update-then-insert elsewhere."""

    def __init__(self, dialect: Dialect, values: dict[str, Any], fast: bool) -> None:
        # `values` maps column names to bind parameters / SQL expressions and includes session_key.
        compile_for = dialect if fast else None
        changed = [name for name in values if name != "session_key"]
        self.native: _Statement | None = None
        if dialect.name in ("sqlite", "postgresql"):
            dialect_insert: Callable[[Table], Any] = sqlite.insert if dialect.name == "sqlite" else postgresql.insert
            stmt = dialect_insert(sessions).values(values)
            upsert = stmt.on_conflict_do_update(
                index_elements=[sessions.c.session_key],
                set_={name: stmt.excluded[name] for name in changed},
            )
            self.native = _Statement(upsert, compile_for)
        elif dialect.name in _MYSQL_FAMILY:
            mysql_stmt = mysql.insert(sessions).values(values)
            duplicate = mysql_stmt.on_duplicate_key_update({name: mysql_stmt.inserted[name] for name in changed})
            self.native = _Statement(duplicate, compile_for)
        where = sessions.c.session_key == values["session_key"]
        changes = {name: values[name] for name in changed}
        self.update = _Statement(update(sessions).where(where).values(changes), compile_for)
        self.insert = _Statement(insert(sessions).values(values), compile_for)

    async def run(self, tx: _Tx, params: dict[str, Any]) -> None:
        """Execute inside the caller's writing block."""
        if self.native is not None:
            await tx.execute(self.native, params)
        elif await tx.execute(self.update, params) == 0:
            await tx.execute(self.insert, params)


class SqlHistoryStore:
    """HistoryStore over an async SQLAlchemy engine; open with `await SqlHistoryStore.open(url)`."""

    def __init__(
        self, engine: AsyncEngine, shown_url: str, reader: _Held | None = None, writer: _Held | None = None
    ) -> None:
        """Use `open`; `reader` and `writer` are the connections kept for the aiosqlite fast path."""
        self._engine = engine
        self._shown_url = shown_url
        # Reads have their own connection so that a write waiting for a lock held by another
        # process never holds them up; WAL lets them run beside any writer.
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()  # the write connection runs one transaction at a time
        # The read connection is reopened only between reads.
        self._read_lock = self._lock if reader is writer else asyncio.Lock()
        self.retry = RetryPolicy()  # tests shorten it
        self._failing = False  # the last operation gave up: say so in the log when one works again
        self.on_write: Callable[[float], None] | None = None  # told each write's seconds (core.metrics)
        self._unfinished: set[asyncio.Future[Any]] = set()  # shielded operations still running
        self._closed = False
        fast = writer is not None
        dialect = engine.dialect
        compile_for = dialect if fast else None
        self._compile_for = compile_for
        # PostgreSQL's text cannot hold U+0000 (it refuses the whole row); the others store it.
        self._nul_free = dialect.name == "postgresql"
        m, s = messages.c, sessions.c
        key: BindParameter[str] = bindparam("key")
        # Statements are built (and for the fast path compiled) once: doing it per call would cost
        # more CPU than the SQLite work itself.
        cleared = func.coalesce(select(s.cleared_before).where(s.session_key == key).scalar_subquery(), 0)
        visible = (m.session_key == key, m.id > cleared, m.hidden == false())
        # A window's pages leave tool rows' text unread (a fetched page can be megabytes of it, and
        # most tool rows do not fit); `_tool_texts` reads the few chosen, as one range of the index.
        is_tool = m.role == TOOL_ROLE
        text_unless_tool = case((is_tool, literal_column("''")), else_=m.content)
        newest = select(m.id, m.role, text_unless_tool, m.tokens).order_by(m.id.desc())
        self._first_page = _Statement(newest.where(*visible).limit(WINDOW_PAGE), compile_for)
        self._next_page = _Statement(newest.where(*visible, m.id < bindparam("before")).limit(WINDOW_PAGE), compile_for)
        id_range = (m.session_key == key, m.id >= bindparam("first"), m.id <= bindparam("last"))
        self._tool_texts = _Statement(select(m.id, m.content).where(*id_range, is_tool), compile_for)
        # Rollback reads the tail's roles (an exchange with many tool calls can span pages) and hides
        # the exchange as one id range of the session: its rows are written in one transaction.
        tail = select(m.id, m.role).where(*visible).order_by(m.id.desc())
        self._tail_page = _Statement(tail.limit(WINDOW_PAGE), compile_for)
        self._tail_next = _Statement(tail.where(m.id < bindparam("before")).limit(WINDOW_PAGE), compile_for)
        self._hide_span = _Statement(update(messages).where(*id_range).values(hidden=true()), compile_for)
        columns = ("session_key", "role", "content", "tokens", "hidden", "created_at")
        self._insert_message = _Statement(
            insert(messages).values({name: bindparam(name) for name in columns}), compile_for
        )
        now: BindParameter[float] = bindparam("now")
        self._touch = _SessionUpsert(dialect, {"session_key": key, "updated_at": now}, fast)
        max_id = select(func.coalesce(func.max(m.id), 0)).where(m.session_key == key).scalar_subquery()
        self._reset = _SessionUpsert(dialect, {"session_key": key, "cleared_before": max_id, "updated_at": now}, fast)
        self._lock_session: _Statement | None = None
        if dialect.name != "sqlite":
            self._lock_session = _Statement(select(s.session_key).where(s.session_key == key).with_for_update(), None)
        self._get_session = _Statement(
            select(s.preset, s.model, s.account, s.updated_at, s.reply_mode, s.voice).where(s.session_key == key),
            compile_for,
        )

    @classmethod
    async def open(cls, url: str, *, driver_fast_path: bool = True) -> SqlHistoryStore:
        """Connect, create missing tables and prove a write works. Raises StorageError naming the
        (password-free) URL: DatabaseNotWritable when the database cannot be written at all.

        `driver_fast_path=False` sends SQLite statements through SQLAlchemy like every other
        database does; tests use it to cover that path.
        """
        try:
            parsed: URL = make_url(url)
        except Exception as exc:  # ArgumentError, ValueError: anything unparsable is the same mistake
            raise StorageError(f"history store: bad database URL {_redact(url)!r}: {short(exc)}") from exc
        shown = parsed.render_as_string(hide_password=True)
        try:
            dialect_class = parsed.get_dialect()
        except Exception as exc:  # unknown dialect or driver name
            raise StorageError(f"history store: cannot use {shown}: {short(exc)}") from exc
        if not dialect_class.is_async:
            raise StorageError(
                f"history store: {shown} names a synchronous driver; use an async one such as "
                "sqlite+aiosqlite:/// or postgresql+asyncpg://"
            )
        is_sqlite = parsed.get_backend_name() == "sqlite"
        parsed = _with_utf8mb4(parsed)
        if is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # typically a part of the path is a file
                    raise StorageError(
                        f"history store: cannot create the folder of {shown}: {exc.strerror or exc}: {exc.filename}"
                    ) from exc
        try:
            # hide_parameters: logged SQL errors must not carry users' messages.
            engine = create_async_engine(parsed, hide_parameters=True)
        except ImportError as exc:
            raise StorageError(f"history store: the driver for {shown} is not installed: {exc}") from exc
        except Exception as exc:  # bad options in the URL's query string
            raise StorageError(f"history store: cannot use {shown}: {short(exc)}") from exc
        if is_sqlite:
            event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        held: list[_Held] = []
        checking_write = False
        try:
            async with engine.begin() as conn:
                await conn.run_sync(create_or_upgrade)
            checking_write = True
            await _check_writable(engine)
            checking_write = False
            logger.info("history store: {}", shown)
            if driver_fast_path and engine.dialect.driver == "aiosqlite":
                held.append(await _Held.connect(engine))
                if not isinstance(engine.sync_engine.pool, StaticPool):
                    held.append(await _Held.connect(engine))
                # A one-connection pool (":memory:") gives every checkout the same database
                # connection: reads and writes then share it, and its lock.
                return cls(engine, shown, held[0], held[-1])
        except Exception as exc:  # refused connection, bad password, unopenable file: all one line
            for connection in held:
                await connection.conn.close()
            await engine.dispose()
            logger.error("history store: opening {} failed: {!r}", shown, exc)
            if isinstance(exc, StorageError):  # from the schema step, already one clear line
                raise
            if not_writable(exc) or (checking_write and not is_lock_wait(exc) and not _is_link_failure(exc)):
                raise DatabaseNotWritable(shown, not_writable_detail(exc)) from exc
            raise StorageError(f"history store: cannot open {shown}: {short(exc)}") from exc
        return cls(engine, shown)

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine, for checks and tests."""
        return self._engine

    @property
    def _driver(self) -> Any:
        """The aiosqlite connection reads run on (None off the fast path), for tests."""
        return self._reader.driver if self._reader is not None else None

    async def close(self) -> None:
        """Wait for the running operation, then dispose the engine; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._unfinished:
            await asyncio.gather(*self._unfinished, return_exceptions=True)
        reads = self._read_lock if self._read_lock is not self._lock else contextlib.nullcontext()
        async with self._lock, reads:
            for held in {self._reader, self._writer}:
                if held is not None:
                    await held.conn.close()
            await self._engine.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"history store: {self._shown_url} is closed")

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[_Tx]:
        held = self._reader
        if held is None:
            self._check_open()
            async with self._engine.connect() as conn:
                try:
                    yield _AlchemyTx(conn)
                except DB_ERRORS as exc:
                    if needs_reopen(exc):
                        await conn.invalidate()
                    raise
            return
        async with self._read_lock:
            self._check_open()  # after waiting: close() may have run meanwhile
            if held.broken:
                await held.reopen(self._engine)
            try:
                yield _AiosqliteTx(held.driver)
            except DB_ERRORS as exc:
                held.broken = needs_reopen(exc)
                raise

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[_Tx]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        held = self._writer
        if held is None:
            self._check_open()
            async with self._engine.connect() as conn:
                try:
                    async with conn.begin():
                        yield _AlchemyTx(conn)
                except DB_ERRORS as exc:
                    if needs_reopen(exc):
                        await conn.invalidate()
                    raise
            return
        async with self._lock:
            self._check_open()
            if held.broken:
                await held.reopen(self._engine)
            driver = held.driver
            try:
                yield _AiosqliteTx(driver)
                await driver.commit()
            except BaseException as exc:
                with contextlib.suppress(*DB_ERRORS):  # the error that matters is `exc`
                    await driver.rollback()
                if isinstance(exc, DB_ERRORS):
                    held.broken = needs_reopen(exc)
                raise

    async def _run(self, action: str, work: Callable[[_Tx], Awaitable[_T]], *, write: bool) -> _T:
        """Run `work` in one reading or writing block; transient failures are tried again.

        Between tries no lock is held, so one session's write that waits for the database does not
        hold up any other session. Raises StorageError once `retry.budget` seconds are spent.
        """
        started = time.monotonic()
        backoff: Backoff | None = None
        while True:
            try:
                async with self._writing() if write else self._reading() as tx:
                    result = await work(tx)
            except DB_ERRORS as exc:
                if not is_transient(exc):
                    raise _failed(action, exc) from exc
                policy = self.retry
                if backoff is None:
                    backoff = policy.backoff()
                    logger.warning("history store: {} failed, trying again: {}", action, short(exc))
                delay = backoff.next_delay()
                if time.monotonic() + delay - started > policy.budget:
                    self._failing = True
                    raise _failed(action, exc) from exc
                await asyncio.sleep(delay)
                continue
            if backoff is not None or self._failing:
                self._failing = False
                logger.info("history store: {} works again", self._shown_url)
            if write and self.on_write is not None:
                self.on_write(time.monotonic() - started)
            return result

    async def _take_session(self, tx: _Tx, session_key: str) -> None:
        """Lock the session's row for this transaction (a server database runs writers of one
        session concurrently); SQLite already runs one writer at a time, so nothing is sent."""
        if self._lock_session is not None:
            await tx.fetch(self._lock_session, {"key": session_key})

    @_finish_even_if_cancelled
    async def window(self, session_key: str, budget_tokens: int) -> list[StoredTurn]:
        """The newest visible turns fitting `budget_tokens`, oldest first. Raises StorageError."""
        if budget_tokens <= 0 and not self._closed:
            return []

        async def read(tx: _Tx) -> list[StoredTurn]:
            taken: list[StoredTurn | _UnreadTool] = []
            left = budget_tokens
            rows = await tx.fetch(self._first_page, {"key": session_key})
            while True:
                remaining = fill_window(map(_window_row, rows), left, taken)
                if remaining is None or len(rows) < WINDOW_PAGE:
                    break
                left = remaining
                rows = await tx.fetch(self._next_page, {"key": session_key, "before": rows[-1][0]})
            return await self._with_tool_texts(tx, session_key, finish_window(taken, budget_tokens))

        return await self._run("reading the window", read, write=False)

    async def _with_tool_texts(
        self, tx: _Tx, session_key: str, window: list[StoredTurn | _UnreadTool]
    ) -> list[StoredTurn]:
        """The window with its tool rows' texts read; a row gone meanwhile (pruned by hand) is left out."""
        unread = [row.id for row in window if isinstance(row, _UnreadTool)]
        if not unread:
            return cast(list[StoredTurn], window)
        params = {"key": session_key, "first": unread[0], "last": unread[-1]}
        texts: dict[int, str] = {row[0]: row[1] for row in await tx.fetch(self._tool_texts, params)}
        return [
            row if isinstance(row, StoredTurn) else StoredTurn(TOOL_ROLE, texts[row.id], row.tokens)
            for row in window
            if isinstance(row, StoredTurn) or row.id in texts
        ]

    @_finish_even_if_cancelled
    async def append_exchange(
        self,
        session_key: str,
        user_text: str,
        reply_text: str,
        *,
        now: float | None = None,
        tools: Sequence[StoredTool] = (),
    ) -> None:
        """Store the user turn, one row per tool call (role "tool"), then the reply, in one transaction.
        Raises StorageError."""
        at = time.time() if now is None else now
        rows = [
            {
                "session_key": session_key,
                "role": turn.role,
                "content": _without_nul(turn.content) if self._nul_free else turn.content,
                "tokens": turn.tokens,
                "hidden": False,
                "created_at": at,
            }
            for turn in exchange_rows(user_text, reply_text, tools)
        ]

        async def write(tx: _Tx) -> None:
            # The session's row first: on a server database its row lock makes two writers of one
            # session take turns, so one exchange's ids are never interleaved with another's.
            await self._touch.run(tx, {"key": session_key, "now": at})
            # executemany keeps list order, so the rows' ids follow the exchange's order.
            await tx.execute_many(self._insert_message, rows)

        await self._run("saving an exchange", write, write=True)

    @_finish_even_if_cancelled
    async def reset(self, session_key: str) -> None:
        """Start a new conversation without deleting anything; a hidden RESET_ROLE row records it.
        Raises StorageError."""
        now = time.time()
        marker = reset_marker_row(session_key, now)

        async def write(tx: _Tx) -> None:
            await self._take_session(tx, session_key)
            # The marker goes in first, so `cleared_before` (the max id, read and written by one
            # statement, so no append can slip in between) is the marker's own id.
            await tx.execute(self._insert_message, marker)
            await self._reset.run(tx, {"key": session_key, "now": now})

        await self._run("resetting a session", write, write=True)

    @_finish_even_if_cancelled
    async def rollback(self, session_key: str) -> bool:
        """Hide the last visible exchange (user, its tool rows, assistant); False if there is none.
        Raises StorageError."""

        async def write(tx: _Tx) -> bool:
            await self._take_session(tx, session_key)
            rows = await self._last_exchange(tx, session_key)
            if not rows:
                return False
            await tx.execute(self._hide_span, {"key": session_key, "first": rows[-1][0], "last": rows[0][0]})
            return True

        return await self._run("rolling back a session", write, write=True)

    async def _last_exchange(self, tx: _Tx, session_key: str) -> list[Sequence[Any]]:
        """(id, role) of the last visible exchange's rows, newest first; empty when the tail is not one."""
        rows = list(await tx.fetch(self._tail_page, {"key": session_key}))
        while True:
            count = last_exchange_length(row[1] for row in rows)
            if count is not None:
                return rows[:count]
            if not rows or len(rows) % WINDOW_PAGE:  # the session has no more rows
                return []
            more = await tx.fetch(self._tail_next, {"key": session_key, "before": rows[-1][0]})
            if not more:
                return []
            rows.extend(more)

    @_finish_even_if_cancelled
    async def get_session(self, session_key: str) -> SessionState:
        """The session's settings, defaults when never seen. Raises StorageError."""

        async def read(tx: _Tx) -> Sequence[Sequence[Any]]:
            return await tx.fetch(self._get_session, {"key": session_key})

        rows = await self._run("reading a session", read, write=False)
        if not rows:
            return SessionState(session_key)
        preset, model, account, updated_at, reply_mode, voice = rows[0]
        return SessionState(session_key, preset, model, account, updated_at, reply_mode, voice)

    @_finish_even_if_cancelled
    async def update_session(self, session_key: str, /, **fields: str) -> None:
        """Set any of SESSION_FIELDS. Raises TypeError for other names, StorageError on failure."""
        check_session_fields(fields)
        values: dict[str, ColumnElement[Any]] = {name: bindparam(name) for name in fields}
        values["session_key"] = bindparam("key")
        values["updated_at"] = bindparam("now")
        # Rare, so built per call rather than one statement per combination of fields.
        upsert = _SessionUpsert(self._engine.dialect, values, self._compile_for is not None)
        params = {**fields, "key": session_key, "now": time.time()}

        async def write(tx: _Tx) -> None:
            await upsert.run(tx, params)

        await self._run("updating a session", write, write=True)


@dataclass(frozen=True, slots=True)
class _UnreadTool:
    """A tool row while its window is chosen: its text is read only if it makes it in."""

    id: int
    tokens: int
    role: str = TOOL_ROLE


def _window_row(row: Sequence[Any]) -> StoredTurn | _UnreadTool:
    """A page row (id, role, text or "" for a tool row, tokens) as `fill_window` takes it."""
    if row[1] == TOOL_ROLE:
        return _UnreadTool(row[0], row[3])
    return StoredTurn(row[1], row[2], row[3])


async def _check_writable(engine: AsyncEngine) -> None:
    """Write and delete one row: a file opened read-only, a read-only folder or mount, a full disk
    and a user without write rights all pass table creation when the tables exist, and fail here."""
    async with engine.begin() as conn:
        await conn.execute(insert(sessions).values(session_key=_WRITE_CHECK_KEY, updated_at=0.0))
        await conn.execute(delete(sessions).where(sessions.c.session_key == _WRITE_CHECK_KEY))


def _without_nul(text: str) -> str:
    """The text with each NUL character replaced by U+FFFD, which any text column can store."""
    return text.replace("\x00", "\ufffd")


def _with_utf8mb4(url: URL) -> URL:
    """MySQL/MariaDB connections default to a 3-byte "utf8" on many servers, which cannot hold
    emoji: ask for utf8mb4 unless the URL names a charset itself."""
    if url.get_backend_name() in _MYSQL_FAMILY and "charset" not in url.query:
        return url.update_query_dict({"charset": "utf8mb4"})
    return url


def _is_link_failure(exc: BaseException) -> bool:
    """The server went away during the check: that says nothing about write rights."""
    return isinstance(exc, OSError) or bool(getattr(exc, "connection_invalidated", False))


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings; PRAGMAs (except WAL) are not stored in the file."""
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
