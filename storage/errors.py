"""How database failures become one short StorageError (the detail is logged once)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any

from loguru import logger
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.errors import StorageError

# The aiosqlite fast path raises sqlite3 errors unwrapped; drivers raise OSError for refused or
# dropped connections.
DB_ERRORS = (SQLAlchemyError, sqlite3.Error, OSError)
_HELP_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")

# SQLite primary result codes (the low byte of an extended code such as SQLITE_READONLY_DBMOVED).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT = 3, 5, 6, 8, 10, 11
_FULL, _CANTOPEN, _PROTOCOL, _AUTH, _NOTADB = 13, 14, 15, 23, 26
# Worth another try: a lock held elsewhere, a full disk, a file made read-only, a failing disk.
_RETRY_CODES = frozenset({_BUSY, _LOCKED, _READONLY, _IOERR, _FULL, _CANTOPEN, _PROTOCOL})
# The connection itself may be the problem: SQLite falls back to a read-only open without saying
# so, and a replaced or failing file stays broken for a connection opened on the old one.
_REOPEN_CODES = frozenset({_READONLY, _IOERR, _CANTOPEN, _PROTOCOL})
# At start-up these mean the configured database cannot be written at all.
_NOT_WRITABLE_CODES = frozenset({_PERM, _READONLY, _CORRUPT, _FULL, _CANTOPEN, _AUTH, _NOTADB})


class DatabaseNotWritable(StorageError):
    """`database.url` names a database this process cannot write: a setup mistake, not an outage.

    Shaped like ConfigError (`key`, `problem`, `line`, `one_line()`) so start-up can report it the
    same way and exit with the config exit code.
    """

    def __init__(self, shown_url: str, detail: str) -> None:
        self.key = "database.url"
        self.problem = f"{shown_url} ({detail})"
        self.line: int | None = None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The single line shown to the user; the URL in it never carries a password."""
        return f"数据库无法写入 database not writable: {self.key} = {self.problem}"


class DatabaseTooNew(DatabaseNotWritable):
    """The database's schema revision is one this version of the bot does not know: it was made by
    a newer version, and this one must not write to it.

    A DatabaseNotWritable, so start-up reports it the same way (one line, the config exit code).
    """

    def __init__(self, shown_url: str, revision: str, head: str) -> None:
        self.shown_url = shown_url
        self.revision = revision
        self.head = head
        super().__init__(shown_url, f"schema revision {revision}")

    def one_line(self) -> str:
        """The single line shown to the user, naming the revision found and the newest one known."""
        return (
            f"数据库由更新版本的机器人创建（结构版本 {self.revision}，本版本只认识到 {self.head}），请升级机器人"
            f" database made by a newer version of the bot (schema revision {self.revision}, this version"
            f" knows up to {self.head}; upgrade the bot): {self.key} = {self.shown_url}"
        )


def short(exc: BaseException) -> str:
    """First line of an exception's text; SQLAlchemy appends SQL and a help link we do not show."""
    text = _HELP_LINK.sub("", str(getattr(exc, "orig", None) or exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failed(store: str, action: str, exc: BaseException) -> StorageError:
    """Log the full detail once and build the short error the caller shows."""
    logger.error("{}: {} failed: {!r}", store, action, exc)
    return StorageError(f"{store}: {action} failed: {short(exc)}")


def retrieve_exception(task: asyncio.Future[Any]) -> None:
    """Done-callback for shielded operations: their failures were logged by `failed` already."""
    if not task.cancelled():
        task.exception()


def _sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an error, raw or wrapped by SQLAlchemy; None if not SQLite's."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    if isinstance(orig, sqlite3.ProgrammingError) and "closed" in str(orig):
        return _CANTOPEN  # "Cannot operate on a closed database": as good as unopened
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same operation again later may succeed (locks, full disks, lost links)."""
    code = _sqlite_code(exc)
    if code is not None:
        return code in _RETRY_CODES
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # OperationalError / InterfaceError from a server database are about the link or the server's
    # state (shutting down, failover, deadlock), never about the statement itself.
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout | OSError)


def needs_reopen(exc: BaseException) -> bool:
    """Whether the connection that raised `exc` should be replaced before the next try."""
    code = _sqlite_code(exc)
    return code in _REOPEN_CODES if code is not None else isinstance(exc, OSError)


def is_lock_wait(exc: BaseException) -> bool:
    """Another connection holds the lock: a wait, not a fault of the database."""
    return _sqlite_code(exc) in (_BUSY, _LOCKED)


def not_writable(exc: BaseException) -> bool:
    """At start-up: SQLite says the file cannot be opened for writing, is read-only or is no database."""
    return _sqlite_code(exc) in _NOT_WRITABLE_CODES


def not_writable_detail(exc: BaseException) -> str:
    """The reason shown in DatabaseNotWritable: SQLite's words, saying when the file would not even open."""
    detail = short(exc)
    return f"cannot open: {detail}" if _sqlite_code(exc) == _CANTOPEN else detail
