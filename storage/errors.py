"""How database failures become one short StorageError (the detail is logged once)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any

from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StorageError

# The aiosqlite fast path raises sqlite3 errors unwrapped; drivers raise OSError for refused or
# dropped connections.
DB_ERRORS = (SQLAlchemyError, sqlite3.Error, OSError)
_HELP_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")


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
