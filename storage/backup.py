"""`--backup`, `--export-history` and `--import-history`: copy, export and import the bot's database.

SQLite files are copied with SQLite's online backup API: one read transaction, so the copy is a
consistent snapshot even while a running bot writes (WAL lets it go on writing meanwhile). Other
databases are dumped as JSONL (storage/transfer.py's dump format), which `--import-history`
restores. Every line shown names the database by its password-free URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import MetaData, Table, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.errors import StorageError
from storage.errors import DB_ERRORS, short
from storage.models import Base
from storage.transfer import (
    DUMP_FORMAT,
    PAGE,
    BadLine,
    export_history,
    header_record,
    import_history,
    jsonl,
    refuse_existing,
)

EXIT_OK = 0
EXIT_FAILED = 2
SQLITE_BUSY_MS = 10_000  # how long the copy waits for a writer's lock before giving up


@dataclass(frozen=True, slots=True)
class BackupResult:
    tables: int
    rows: int
    bytes: int


def shown_url(url: str) -> str:
    """The URL for messages: never with its password (unparsable ones are not shown at all)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # ArgumentError, ValueError: the store reports the parse error itself
        return "(unparsable database URL)"


def sqlite_file(engine: AsyncEngine) -> Path | None:
    """The database file of a SQLite engine; None for other databases and in-memory ones."""
    url = engine.url
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


# --- SQLite: the online backup API -------------------------------------------------------------------


def backup_sqlite(source: Path, target: Path) -> BackupResult:
    """Copy `source` to `target` in one step of the online backup API; a half-written copy is removed."""
    refuse_existing(target)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with (
            contextlib.closing(sqlite3.connect(source, timeout=SQLITE_BUSY_MS / 1000)) as src,
            contextlib.closing(sqlite3.connect(partial)) as copy,
        ):
            # pages=-1: the whole database under one read lock, so the copy is one snapshot;
            # copying in steps restarts whenever another connection writes, maybe forever.
            src.backup(copy, pages=-1)
            tables, rows = _count_rows(copy)
        refuse_existing(target)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return BackupResult(tables, rows, target.stat().st_size)


def _count_rows(conn: sqlite3.Connection) -> tuple[int, int]:
    names = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    rows = sum(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names)
    return len(names), rows


# --- other databases: a JSONL dump -------------------------------------------------------------------


async def dump_database(engine: AsyncEngine, target: Path, source: str) -> BackupResult:
    """Every table as JSONL, one object per row, read as one snapshot (REPEATABLE READ where offered).

    The bot's tables are read through its own models (so values have their Python types on every
    dialect); tables it does not know (Alembic's, a newer version's) are reflected and dumped too.
    """
    refuse_existing(target)
    partial = target.with_name(target.name + ".partial")
    tables = rows = 0
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            out.write(jsonl(header_record(source, format_name=DUMP_FORMAT)))
            async with engine.connect() as conn:
                if engine.dialect.name in ("postgresql", "mysql", "mariadb"):
                    conn = await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    for table in await _all_tables(conn):
                        tables += 1
                        rows += await _dump_table(conn, table, out)
        refuse_existing(target)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return BackupResult(tables, rows, target.stat().st_size)  # noqa: ASYNC240  (one stat, after the work)


async def _all_tables(conn: AsyncConnection) -> list[Table]:
    reflected = MetaData()
    await conn.run_sync(lambda sync: reflected.reflect(sync))
    known = Base.metadata.tables
    return [known.get(name, table) for name, table in sorted(reflected.tables.items())]


async def _dump_table(conn: AsyncConnection, table: Table, out: Any) -> int:
    order = list(table.primary_key.columns) or list(table.columns)
    result = await conn.stream(select(table).order_by(*order))
    count = 0
    async for page in result.partitions(PAGE):
        lines = [
            json.dumps(
                {"table": table.name, "row": dict(row._mapping)},
                ensure_ascii=False,
                separators=(",", ":"),
                default=_plain,
            )
            + "\n"
            for row in page
        ]
        out.write("".join(lines))
        count += len(lines)
    return count


def _plain(value: Any) -> Any:
    """JSON for column types json cannot write (other tables than the bot's may have them)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


# --- the command line ---------------------------------------------------------------------------------


async def run_command(action: str, url: str, path: Path) -> tuple[int, str]:
    """Open the store, do `action` ("backup" / "export" / "import") with `path`, close the store.

    Returns the exit code and the one line to print; never raises for expected failures.
    """
    from storage.store import SqlHistoryStore

    shown = shown_url(url)
    try:
        _check_path(action, path)  # before opening: a mistyped path must not create or upgrade a database
    except OSError as exc:
        return EXIT_FAILED, str(exc)
    try:
        store = await SqlHistoryStore.open(url)
    except StorageError as exc:
        return EXIT_FAILED, f"数据库无法打开 (cannot open the database): {exc}"
    try:
        return EXIT_OK, await _do(action, store.engine, path, shown)
    except BadLine as exc:
        return EXIT_FAILED, f"{path}: {exc}"
    except FileExistsError as exc:
        return EXIT_FAILED, str(exc)
    except OSError as exc:
        return EXIT_FAILED, f"{path}: 文件读写失败 (file error): {exc.strerror or exc}"
    except (*DB_ERRORS, StorageError) as exc:
        logger.error("{} with {} failed: {!r}", action, shown, exc)
        return EXIT_FAILED, f"数据库操作失败 (database error) {shown}: {short(exc)}"
    finally:
        await store.close()


def _check_path(action: str, path: Path) -> None:
    """Refuse an output file that exists, or an input file that does not. Raises OSError."""
    if action != "import":
        refuse_existing(path)
    elif not path.is_file():
        raise FileNotFoundError(f"{path} 不存在或不是文件 (no such file)")


async def _do(action: str, engine: AsyncEngine, path: Path, shown: str) -> str:
    if action == "backup":
        database = sqlite_file(engine)
        if database is not None:
            copy = await asyncio.to_thread(backup_sqlite, database, path)
            how = "SQLite 在线备份 (online backup)"
        else:
            copy = await dump_database(engine, path, shown)
            how = "JSONL 转储 (dump)"
        return (
            f"已备份到 {path}：{how}，{copy.tables} 个表 {copy.rows} 行 {copy.bytes} 字节"
            f" (backup written: {copy.tables} tables, {copy.rows} rows, {copy.bytes} bytes)"
        )
    if action == "export":
        exported = await export_history(engine, path, shown)
        return (
            f"已导出到 {path}：{exported.sessions} 个会话 {exported.messages} 条消息 {exported.bytes} 字节"
            f" (exported {exported.sessions} sessions, {exported.messages} messages, {exported.bytes} bytes)"
        )
    imported = await import_history(engine, path)
    line = (
        f"已导入 {imported.sessions} 个会话 {imported.messages} 条消息，跳过已有的 {imported.skipped_sessions} 个会话"
        f" (imported {imported.sessions} sessions, {imported.messages} messages;"
        f" skipped {imported.skipped_sessions} sessions already present, {imported.skipped_messages} messages)"
    )
    if imported.tables:
        line += "; restored " + ", ".join(f"{name} {count}" for name, count in sorted(imported.tables.items()))
    if imported.skipped_tables:
        line += "; not restored (not empty here or unknown): " + ", ".join(sorted(imported.skipped_tables))
    return line
