"""Conversation history in any SQLAlchemy async database (SQLite in WAL mode by default)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import bindparam, event, false, func, insert, select, true, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.sql.expression import ColumnElement, Executable

from core.errors import StorageError
from core.tokens import estimate_tokens
from storage.base import (
    WINDOW_PAGE,
    HistoryStore,
    SessionState,
    StoredTurn,
    check_session_fields,
    fill_window,
    finish_window,
)
from storage.models import Base, messages, sessions

__all__ = ["HistoryStore", "SessionState", "SqlHistoryStore", "StoredTurn"]

# WAL lets readers run beside the writer; synchronous=NORMAL under WAL means a commit does not
# wait for fsync (a power cut may lose the last commits, never corrupts the file); busy_timeout
# makes another process's write lock a short wait instead of an error.
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")
# Drivers raise OSError (refused or dropped connections) besides what SQLAlchemy wraps.
_DB_ERRORS = (SQLAlchemyError, OSError)
_HELP_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def _redact(url: str) -> str:
    """The URL with any password replaced, for messages; works on URLs SQLAlchemy cannot parse."""
    return _PASSWORD_IN_URL.sub(r"\1***@", url)


def _short(exc: BaseException) -> str:
    """First line of an exception's text; SQLAlchemy appends SQL and a help link we do not show."""
    text = _HELP_LINK.sub("", str(getattr(exc, "orig", None) or exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failed(action: str, exc: BaseException) -> StorageError:
    """Log the full detail once and build the short error the caller shows."""
    logger.error("history store: {} failed: {!r}", action, exc)
    return StorageError(f"history store: {action} failed: {_short(exc)}")


class _SessionUpsert:
    """Insert-or-update of one sessions row: native ON CONFLICT where the dialect has it."""

    def __init__(self, dialect: str, values: dict[str, Any]) -> None:
        # `values` maps column names to bind parameters / SQL expressions and includes session_key.
        changed = [name for name in values if name != "session_key"]
        self.native: Executable | None = None
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            stmt = dialect_insert(sessions).values(values)
            self.native = stmt.on_conflict_do_update(
                index_elements=[sessions.c.session_key],
                set_={name: stmt.excluded[name] for name in changed},
            )
        where = sessions.c.session_key == values["session_key"]
        self.update = update(sessions).where(where).values({name: values[name] for name in changed})
        self.insert = insert(sessions).values(values)

    async def run(self, conn: AsyncConnection, params: dict[str, Any]) -> None:
        """Execute inside the caller's transaction."""
        if self.native is not None:
            await conn.execute(self.native, params)
            return
        result = await conn.execute(self.update, params)
        if result.rowcount == 0:
            await conn.execute(self.insert, params)


class SqlHistoryStore:
    """HistoryStore over an async SQLAlchemy engine; open with `await SqlHistoryStore.open(url)`."""

    def __init__(self, engine: AsyncEngine, shown_url: str) -> None:
        self._engine = engine
        self._shown_url = shown_url
        self._closed = False
        dialect = engine.dialect.name
        m, s = messages.c, sessions.c
        key = bindparam("key")
        # Statements are built once: building and cache-keying them per call would cost more CPU
        # than the SQLite work itself.
        cleared = func.coalesce(select(s.cleared_before).where(s.session_key == key).scalar_subquery(), 0)
        visible = (m.session_key == key, m.id > cleared, m.hidden == false())
        newest = select(m.id, m.role, m.content, m.tokens).order_by(m.id.desc())
        self._first_page = newest.where(*visible).limit(WINDOW_PAGE)
        self._next_page = newest.where(*visible, m.id < bindparam("before")).limit(WINDOW_PAGE)
        self._last_two = select(m.id, m.role).where(*visible).order_by(m.id.desc()).limit(2)
        self._hide = update(messages).where(m.id.in_(bindparam("ids", expanding=True))).values(hidden=true())
        self._insert_messages = insert(messages)
        self._touch = _SessionUpsert(dialect, {"session_key": key, "updated_at": bindparam("now")})
        max_id = select(func.coalesce(func.max(m.id), 0)).where(m.session_key == key).scalar_subquery()
        self._reset = _SessionUpsert(
            dialect, {"session_key": key, "cleared_before": max_id, "updated_at": bindparam("now")}
        )
        self._get_session = select(s.preset, s.model, s.account, s.updated_at).where(s.session_key == key)

    @classmethod
    async def open(cls, url: str) -> SqlHistoryStore:
        """Connect and create missing tables. Raises StorageError naming the (password-free) URL."""
        try:
            parsed: URL = make_url(url)
        except Exception as exc:  # ArgumentError, ValueError: anything unparsable is the same mistake
            raise StorageError(f"history store: bad database URL {_redact(url)!r}: {_short(exc)}") from exc
        shown = parsed.render_as_string(hide_password=True)
        try:
            is_async = parsed.get_dialect().is_async
        except Exception as exc:  # unknown dialect or driver name
            raise StorageError(f"history store: cannot use {shown}: {_short(exc)}") from exc
        if not is_async:
            raise StorageError(
                f"history store: {shown} names a synchronous driver; use an async one such as "
                "sqlite+aiosqlite:/// or postgresql+asyncpg://"
            )
        options: dict[str, Any] = {"hide_parameters": True}  # logs must not carry users' messages
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # typically a part of the path is a file
                    raise StorageError(
                        f"history store: cannot create the folder of {shown}: "
                        f"{exc.strerror or exc}: {exc.filename}"
                    ) from exc
            # One connection serialises this process's statements: SQLite allows one writer anyway,
            # and a pool of connections would let a read-then-write transaction (rollback) fail
            # with SQLITE_BUSY_SNAPSHOT when another session commits in between.
            options.update(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)
        try:
            engine = create_async_engine(parsed, **options)
        except ImportError as exc:
            raise StorageError(f"history store: the driver for {shown} is not installed: {exc}") from exc
        except Exception as exc:  # bad options in the URL's query string
            raise StorageError(f"history store: cannot use {shown}: {_short(exc)}") from exc
        if is_sqlite:
            event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
        except Exception as exc:  # refused connection, bad password, unopenable file: all one line
            await engine.dispose()
            logger.error("history store: opening {} failed: {!r}", shown, exc)
            raise StorageError(f"history store: cannot open {shown}: {_short(exc)}") from exc
        return cls(engine, shown)

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine, for checks and tests."""
        return self._engine

    async def close(self) -> None:
        """Dispose the engine; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._engine.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"history store: {self._shown_url} is closed")

    async def window(self, session_key: str, budget_tokens: int) -> list[StoredTurn]:
        """The newest visible turns fitting `budget_tokens`, oldest first. Raises StorageError."""
        self._check_open()
        taken: list[StoredTurn] = []
        if budget_tokens <= 0:
            return taken
        left: int | None = budget_tokens
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(self._first_page, {"key": session_key})).all()
                while True:
                    left = fill_window((StoredTurn(r[1], r[2], r[3]) for r in rows), left, taken)
                    if left is None or len(rows) < WINDOW_PAGE:
                        break
                    params = {"key": session_key, "before": rows[-1][0]}
                    rows = (await conn.execute(self._next_page, params)).all()
        except _DB_ERRORS as exc:
            raise _failed("reading the window", exc) from exc
        return finish_window(taken)

    async def append_exchange(
        self, session_key: str, user_text: str, reply_text: str, *, now: float | None = None
    ) -> None:
        """Store the user turn then the reply in one transaction. Raises StorageError."""
        self._check_open()
        at = time.time() if now is None else now
        rows = [
            {
                "session_key": session_key,
                "role": role,
                "content": text,
                "tokens": estimate_tokens(text),
                "hidden": False,
                "created_at": at,
            }
            for role, text in (("user", user_text), ("assistant", reply_text))
        ]
        try:
            async with self._engine.begin() as conn:
                # executemany keeps list order, so the user row always gets the smaller id.
                await conn.execute(self._insert_messages, rows)
                await self._touch.run(conn, {"key": session_key, "now": at})
        except _DB_ERRORS as exc:
            raise _failed("saving an exchange", exc) from exc

    async def reset(self, session_key: str) -> None:
        """Start a new conversation without deleting anything. Raises StorageError."""
        self._check_open()
        try:
            async with self._engine.begin() as conn:
                # One statement reads the max id and writes it, so no append can slip in between.
                await self._reset.run(conn, {"key": session_key, "now": time.time()})
        except _DB_ERRORS as exc:
            raise _failed("resetting a session", exc) from exc

    async def rollback(self, session_key: str) -> bool:
        """Hide the last visible user+assistant pair; False if there is none. Raises StorageError."""
        self._check_open()
        try:
            async with self._engine.begin() as conn:
                rows = (await conn.execute(self._last_two, {"key": session_key})).all()
                # Exchanges are written as pairs, so a well-formed tail is assistant over user.
                if [row[1] for row in rows] != ["assistant", "user"]:
                    return False
                await conn.execute(self._hide, {"ids": [row[0] for row in rows]})
        except _DB_ERRORS as exc:
            raise _failed("rolling back a session", exc) from exc
        return True

    async def get_session(self, session_key: str) -> SessionState:
        """The session's settings, defaults when never seen. Raises StorageError."""
        self._check_open()
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(self._get_session, {"key": session_key})).first()
        except _DB_ERRORS as exc:
            raise _failed("reading a session", exc) from exc
        if row is None:
            return SessionState(session_key)
        return SessionState(session_key, row[0], row[1], row[2], row[3])

    async def update_session(self, session_key: str, **fields: str) -> None:
        """Set preset / model / account. Raises TypeError for other names, StorageError on failure."""
        check_session_fields(fields)
        self._check_open()
        values: dict[str, ColumnElement[Any]] = {name: bindparam(name) for name in fields}
        values["session_key"] = bindparam("key")
        values["updated_at"] = bindparam("now")
        upsert = _SessionUpsert(self._engine.dialect.name, values)  # rare: built per call
        try:
            async with self._engine.begin() as conn:
                await upsert.run(conn, {**fields, "key": session_key, "now": time.time()})
        except _DB_ERRORS as exc:
            raise _failed("updating a session", exc) from exc


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings; PRAGMAs are not stored in the file (except WAL) so run each time."""
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()
