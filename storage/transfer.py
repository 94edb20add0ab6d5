"""The history transfer format (JSONL) and its export and import, on any database the store supports.

One JSON object per line; the first line is the header, every other line has a `kind`:

    {"kind": "header", "format": "chatgpt-qq-bot/history", "version": 1, "exported_at": ISO, "source": URL}
    {"kind": "session", "session_key", "preset", "model", "account", "reply_mode", "voice",
     "cleared_before", "updated_at" (ISO 8601 UTC), "updated_at_unix"}
    {"kind": "message", "session_key", "id", "role", "content", "tokens", "hidden",
     "created_at" (ISO 8601 UTC), "created_at_unix"}

Session lines come first, then messages in ascending id order; ids and `cleared_before` are the
source database's. A reset is a message with role "reset" (hidden). `source` never carries a
password. Import gives messages new ids in the same order and maps `cleared_before` onto them, so
every window and every reset is the same after the move. A session line written before a field
existed (`voice`, schema revision 0002) imports with that field empty; readers ignore fields they
do not know, so the format stays version 1.

`--backup` of a database other than SQLite writes the dump format (storage/backup.py): a header
with format "chatgpt-qq-bot/dump", then `{"table": NAME, "row": {column: value}}` lines; import
reads both.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, insert, select, union
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.base import RESET_ROLE, TOOL_ROLE
from storage.models import Base, messages, sessions

HISTORY_FORMAT = "chatgpt-qq-bot/history"
DUMP_FORMAT = "chatgpt-qq-bot/dump"
FORMAT_VERSION = 1
PAGE = 1000  # rows per query and per insert batch: memory stays bounded whatever the table size
KEY_BATCH = 500  # session keys per "already present?" query
MAX_KEY_LENGTH = 255  # sessions.session_key is String(255)
SESSION_TEXT_FIELDS = ("preset", "model", "account", "reply_mode", "voice")
# Lengths of the sessions columns (String(n)); fields not named here are String(255).
_SESSION_TEXT_LIMITS = {"reply_mode": 16}
# Fields files of earlier versions lack: missing means "" (the column's default).
_LATER_SESSION_FIELDS = frozenset({"voice"})
SCHEMA_VERSION_TABLE = "alembic_version"
ROLES = frozenset({"user", "assistant", "system", TOOL_ROLE, RESET_ROLE})


class BadLine(ValueError):
    """A line of an import file that cannot be used; nothing has been written when it is raised."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"第 {line} 行无效 (line {line} is invalid): {reason}")


def iso_utc(at: float) -> str:
    """ISO 8601 in UTC with microseconds, e.g. 2026-12-03T10:29:08.123456+00:00."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")


def refuse_existing(target: Path) -> None:
    """Raise FileExistsError when `target` exists: backups and exports never overwrite a file."""
    if target.exists():
        raise FileExistsError(f"{target} 已存在，不会覆盖 (already exists; not overwritten)")


# --- records ---------------------------------------------------------------------------------------


def header_record(source: str, *, format_name: str = HISTORY_FORMAT, now: float | None = None) -> dict[str, Any]:
    """The first line; `source` is a password-free URL (or a short description)."""
    return {
        "kind": "header",
        "format": format_name,
        "version": FORMAT_VERSION,
        "exported_at": iso_utc(time.time() if now is None else now),
        "source": source,
    }


def session_record(row: Any) -> dict[str, Any]:
    """A sessions row (session_key, preset, model, account, reply_mode, voice, cleared_before, updated_at)."""
    updated_at = float(row.updated_at or 0.0)
    return {
        "kind": "session",
        "session_key": row.session_key,
        "preset": row.preset,
        "model": row.model,
        "account": row.account,
        "reply_mode": row.reply_mode,
        "voice": row.voice,
        "cleared_before": int(row.cleared_before),
        "updated_at": iso_utc(updated_at),
        "updated_at_unix": updated_at,
    }


def message_record(row: Any) -> dict[str, Any]:
    """A messages row (id, session_key, role, content, tokens, hidden, created_at)."""
    created_at = float(row.created_at)
    return {
        "kind": "message",
        "session_key": row.session_key,
        "id": int(row.id),
        "role": row.role,
        "content": row.content,
        "tokens": int(row.tokens),
        "hidden": bool(row.hidden),
        "created_at": iso_utc(created_at),
        "created_at_unix": created_at,
    }


def jsonl(record: dict[str, Any]) -> str:
    """One line of the file, newline included (non-ASCII text kept readable)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


# --- export ----------------------------------------------------------------------------------------

_SESSION_COLUMNS = (
    sessions.c.session_key,
    sessions.c.preset,
    sessions.c.model,
    sessions.c.account,
    sessions.c.reply_mode,
    sessions.c.voice,
    sessions.c.cleared_before,
    sessions.c.updated_at,
)
_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.session_key,
    messages.c.role,
    messages.c.content,
    messages.c.tokens,
    messages.c.hidden,
    messages.c.created_at,
)


async def history_records(
    engine: AsyncEngine, source: str, *, session_key: str | None = None, page: int = PAGE
) -> AsyncIterator[list[dict[str, Any]]]:
    """The export, a page of records at a time: header, sessions by key, messages by id.

    Each page is one query on its own connection (keyset paging, never OFFSET), so a slow reader
    holds no connection and memory stays at one page. With `session_key`, only that session.
    """
    yield [header_record(source)]
    after_key = ""
    while True:
        key = sessions.c.session_key
        match = key > after_key if session_key is None else key == session_key
        rows = await _fetch(engine, select(*_SESSION_COLUMNS).where(match).order_by(key).limit(page))
        if rows:
            yield [session_record(row) for row in rows]
        if session_key is not None or len(rows) < page:
            break
        after_key = rows[-1].session_key
    after_id = 0
    while True:
        where = [messages.c.id > after_id]
        if session_key is not None:
            where.append(messages.c.session_key == session_key)
        rows = await _fetch(engine, select(*_MESSAGE_COLUMNS).where(*where).order_by(messages.c.id).limit(page))
        if rows:
            yield [message_record(row) for row in rows]
        if len(rows) < page:
            return
        after_id = rows[-1].id


async def _fetch(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


@dataclass
class ExportResult:
    sessions: int = 0
    messages: int = 0
    bytes: int = 0


async def export_history(engine: AsyncEngine, path: Path, source: str) -> ExportResult:
    """Write every session and message to `path` (JSONL). Raises OSError and database errors."""
    refuse_existing(path)
    partial = path.with_name(path.name + ".partial")
    result = ExportResult()
    try:
        with partial.open("wb") as out:
            async for records in history_records(engine, source):
                for record in records:
                    if record["kind"] == "session":
                        result.sessions += 1
                    elif record["kind"] == "message":
                        result.messages += 1
                data = "".join(jsonl(record) for record in records).encode()
                out.write(data)
                result.bytes += len(data)
        refuse_existing(path)
        os.replace(partial, path)  # a failed export leaves no file that looks complete
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return result


# --- reading and checking an import file -------------------------------------------------------------


@dataclass
class _Plan:
    """What pass one learned from the whole file: its format and every session's settings."""

    format_name: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)  # every session key with a session or message line
    tables: dict[str, int] = field(default_factory=dict)  # dump: rows per other table


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line. Raises BadLine, OSError."""
    with path.open("r", encoding="utf-8", newline="\n") as source:
        number = 0
        while True:
            number += 1
            try:
                text = source.readline()
            except UnicodeDecodeError:
                raise BadLine(number, "不是 UTF-8 (not UTF-8)") from None
            if not text:
                return
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise BadLine(number, f"不是 JSON (not JSON): {str(exc)[:80]}") from None
            if not isinstance(value, dict):
                raise BadLine(number, "不是 JSON 对象 (not a JSON object)")
            yield number, value


def _text(record: dict[str, Any], name: str, number: int, *, limit: int | None = None, empty: bool = True) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise BadLine(number, f"{name} 必须是字符串 ({name} must be a string)")
    if not empty and not value:
        raise BadLine(number, f"{name} 不能为空 ({name} must not be empty)")
    if limit is not None and len(value) > limit:
        raise BadLine(number, f"{name} 太长 ({name} is longer than {limit})")
    return value


def _integer(record: dict[str, Any], name: str, number: int, *, minimum: int = 0) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value >= 2**63:
        raise BadLine(number, f"{name} 必须是不小于 {minimum} 的整数 ({name} must be an integer >= {minimum})")
    return value


def _unix_time(record: dict[str, Any], name: str, number: int) -> float:
    value = record.get(f"{name}_unix", record.get(name))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadLine(number, f"{name}_unix 必须是时间戳 ({name}_unix must be a unix time)")
    return float(value)


def check_session(record: dict[str, Any], number: int) -> dict[str, Any]:
    """A sessions row from a session line. Raises BadLine."""
    row: dict[str, Any] = {"session_key": _text(record, "session_key", number, limit=MAX_KEY_LENGTH, empty=False)}
    for name in SESSION_TEXT_FIELDS:
        if name in _LATER_SESSION_FIELDS and name not in record:
            row[name] = ""
            continue
        row[name] = _text(record, name, number, limit=_SESSION_TEXT_LIMITS.get(name, 255))
    row["cleared_before"] = _integer(record, "cleared_before", number)
    row["updated_at"] = _unix_time(record, "updated_at", number)
    return row


def check_message(record: dict[str, Any], number: int) -> tuple[int, dict[str, Any]]:
    """(source id, messages row without id) from a message line. Raises BadLine."""
    role = _text(record, "role", number)
    if role not in ROLES:
        raise BadLine(number, f"未知的 role (unknown role) {role[:20]!r}")
    hidden = record.get("hidden")
    if not isinstance(hidden, bool):
        raise BadLine(number, "hidden 必须是 true/false (hidden must be a boolean)")
    row = {
        "session_key": _text(record, "session_key", number, limit=MAX_KEY_LENGTH, empty=False),
        "role": role,
        "content": _text(record, "content", number),
        "tokens": _integer(record, "tokens", number),
        "hidden": hidden,
        "created_at": _unix_time(record, "created_at", number),
    }
    return _integer(record, "id", number, minimum=1), row


def _dump_as_history(table: str, row: Any, number: int) -> dict[str, Any] | None:
    """A dump's messages / sessions row as the history line it stands for; None for other tables."""
    if not isinstance(row, dict):
        raise BadLine(number, "row 必须是 JSON 对象 (row must be a JSON object)")
    if table == "sessions":
        return {"kind": "session", **row}
    if table == "messages":
        hidden = row.get("hidden")
        return {"kind": "message", **row, "hidden": bool(hidden) if isinstance(hidden, int) else hidden}
    return None


def _records(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, kind, record) after the header, dump lines turned into history lines
    (kind "table" for the other tables of a dump). Raises BadLine."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise BadLine(1, "文件是空的 (the file is empty)")
    number, header = first
    format_name = header.get("format")
    if format_name not in (HISTORY_FORMAT, DUMP_FORMAT):
        raise BadLine(
            number, f"第一行必须是 {HISTORY_FORMAT} 或 {DUMP_FORMAT} 的文件头 (first line must be the header)"
        )
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise BadLine(number, f"不支持的版本 (unsupported version) {version!r}; this bot reads {FORMAT_VERSION}")
    yield number, str(format_name), header
    for number, record in lines:
        if format_name == DUMP_FORMAT:
            table = record.get("table")
            if not isinstance(table, str) or not table:
                raise BadLine(number, "缺少 table (missing table)")
            converted = _dump_as_history(table, record.get("row"), number)
            yield (number, "table", record) if converted is None else (number, converted["kind"], converted)
            continue
        kind = record.get("kind")
        if kind not in ("session", "message"):
            raise BadLine(number, f"未知的 kind (unknown kind) {str(kind)[:20]!r}")
        yield number, str(kind), record


def _plan(path: Path) -> _Plan:
    """Pass one: check every line, learn the sessions. Raises BadLine, OSError."""
    plan = _Plan()
    last_id = 0
    for number, kind, record in _records(path):
        if kind in (HISTORY_FORMAT, DUMP_FORMAT):
            plan.format_name = kind
        elif kind == "session":
            row = check_session(record, number)
            if row["session_key"] in plan.sessions:
                raise BadLine(number, "同一会话出现两次 (the same session appears twice)")
            plan.sessions[row["session_key"]] = row
            plan.keys.add(row["session_key"])
        elif kind == "message":
            source_id, row = check_message(record, number)
            if source_id <= last_id:
                raise BadLine(number, "消息 id 必须递增 (message ids must increase)")
            last_id = source_id
            plan.keys.add(row["session_key"])
        else:
            table = record["table"]
            known = _restorable_tables().get(table)
            if known is not None:
                _table_row(known, record.get("row"), number)
            plan.tables[table] = plan.tables.get(table, 0) + 1
    return plan


# --- import ----------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    sessions: int = 0
    messages: int = 0
    skipped_sessions: int = 0
    skipped_messages: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # dump: rows restored per other table
    skipped_tables: list[str] = field(default_factory=list)  # dump: tables not empty here, or unknown


async def import_history(engine: AsyncEngine, path: Path) -> ImportResult:
    """Read an export (or a dump) into the database behind `engine`.

    The whole file is checked first (BadLine names the first bad line; nothing is written then).
    Sessions already present here (a sessions row or any message) are skipped whole, so running
    the same file twice imports it once. Messages get new ids in file order, written PAGE rows per
    transaction; each session's row is written after its messages, with `cleared_before` mapped.
    """
    plan = _plan(path)
    result = ImportResult()
    present = await _present_keys(engine, plan.keys)
    result.skipped_sessions = len(present)
    new_cleared = await _import_messages(engine, path, plan, present, result)
    rows = []
    for key in sorted(plan.keys - present):
        row = dict(plan.sessions.get(key) or _bare_session(key))
        row["cleared_before"] = new_cleared.get(key, 0)
        rows.append(row)
    for start in range(0, len(rows), PAGE):
        async with engine.begin() as conn:
            await conn.execute(insert(sessions), rows[start : start + PAGE])
    result.sessions = len(rows)
    if plan.format_name == DUMP_FORMAT:
        await _restore_tables(engine, path, plan, result)
    return result


def _bare_session(key: str) -> dict[str, Any]:
    """The sessions row of messages that came without a session line."""
    return {"session_key": key, **dict.fromkeys(SESSION_TEXT_FIELDS, ""), "cleared_before": 0, "updated_at": 0.0}


async def _present_keys(engine: AsyncEngine, keys: set[str]) -> set[str]:
    """The keys that already have a sessions row or messages here."""
    present: set[str] = set()
    ordered = sorted(keys)
    async with engine.connect() as conn:
        for start in range(0, len(ordered), KEY_BATCH):
            batch = ordered[start : start + KEY_BATCH]
            query = union(
                select(sessions.c.session_key).where(sessions.c.session_key.in_(batch)),
                select(messages.c.session_key).where(messages.c.session_key.in_(batch)).distinct(),
            )
            present.update(row[0] for row in (await conn.execute(query)).all())
    return present


async def _import_messages(
    engine: AsyncEngine, path: Path, plan: _Plan, present: set[str], result: ImportResult
) -> dict[str, int]:
    """Pass two: insert the messages of sessions not present; the new `cleared_before` per session."""
    cleared = {key: row["cleared_before"] for key, row in plan.sessions.items()}
    new_cleared: dict[str, int] = {}
    batch: list[tuple[int, dict[str, Any]]] = []

    async def flush() -> None:
        new_ids = await _insert_batch(engine, [row for _, row in batch])
        for (source_id, row), new_id in zip(batch, new_ids, strict=True):
            key = row["session_key"]
            if source_id <= cleared.get(key, 0):
                new_cleared[key] = new_id  # ids rise, so the last one at or below is the boundary
        result.messages += len(batch)
        batch.clear()

    for number, kind, record in _records(path):
        if kind != "message":
            continue
        source_id, row = check_message(record, number)
        if row["session_key"] in present:
            result.skipped_messages += 1
            continue
        batch.append((source_id, row))
        if len(batch) >= PAGE:
            await flush()
    if batch:
        await flush()
    return new_cleared


async def _insert_batch(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[int]:
    """Insert in one transaction; the new ids in row order."""
    async with engine.begin() as conn:
        if engine.dialect.insert_executemany_returning_sort_by_parameter_order:
            statement = insert(messages).returning(messages.c.id, sort_by_parameter_order=True)
            return [int(row[0]) for row in (await conn.execute(statement, rows)).all()]
        ids = []  # MySQL: no RETURNING, one statement per row
        for row in rows:
            inserted = await conn.execute(insert(messages), row)
            ids.append(int(inserted.lastrowid))
        return ids


# --- the other tables of a dump ----------------------------------------------------------------------


def _restorable_tables() -> dict[str, Table]:
    """Tables a dump restores besides messages and sessions: the bot's own, known to this version."""
    skip = {"messages", "sessions"}
    return {name: table for name, table in Base.metadata.tables.items() if name not in skip}


async def _restore_tables(engine: AsyncEngine, path: Path, plan: _Plan, result: ImportResult) -> None:
    """Rows of the other tables, each table only when it is empty here (a restore, not a merge)."""
    known = _restorable_tables()
    wanted: dict[str, Table] = {}
    async with engine.connect() as conn:
        for name in plan.tables:
            table = known.get(name)
            if name == SCHEMA_VERSION_TABLE:
                continue  # this database's schema version is its own, set when the store opened it
            if table is None or await _has_rows(conn, table):
                result.skipped_tables.append(name)
            else:
                wanted[name] = table
    batches: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
    for number, kind, record in _records(path):
        if kind != "table" or record["table"] not in wanted:
            continue
        table = wanted[record["table"]]
        batches[table.name].append(_table_row(table, record["row"], number))
        if len(batches[table.name]) >= PAGE:
            await _insert_rows(engine, table, batches[table.name], result)
    for name, rows in batches.items():
        if rows:
            await _insert_rows(engine, wanted[name], rows, result)


async def _has_rows(conn: AsyncConnection, table: Table) -> bool:
    return bool((await conn.execute(select(func.count()).select_from(select(table).limit(1).subquery()))).scalar())


def _table_row(table: Table, row: Any, number: int) -> dict[str, Any]:
    """The row's known columns; an autoincrement id is left to this database. Raises BadLine."""
    if not isinstance(row, dict):
        raise BadLine(number, "row 必须是 JSON 对象 (row must be a JSON object)")
    values = {}
    for column in table.columns:
        if column.name not in row:
            if column.primary_key:
                raise BadLine(number, f"缺少列 (missing column) {table.name}.{column.name}")
            continue
        if column.primary_key and column.autoincrement is True:
            continue
        values[column.name] = row[column.name]
    return values


async def _insert_rows(engine: AsyncEngine, table: Table, rows: list[dict[str, Any]], result: ImportResult) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(table), rows)
    result.tables[table.name] = result.tables.get(table.name, 0) + len(rows)
    rows.clear()
