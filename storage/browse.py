"""Read-only views of the stored history for the web console: sessions, one session's rows, search, export.

Every query is bounded (a LIMIT, or an id range of at most SEARCH_SPAN) and pages by id or by
(updated_at, session_key) cursors, never by OFFSET; a session's rows are read through
ix_messages_session_key_id. SQLAlchemy Core only, so any dialect the store supports works here.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.base import RESET_ROLE
from storage.errors import DB_ERRORS, failed
from storage.models import messages, sessions

SESSIONS_PER_PAGE = 50
MESSAGES_PER_PAGE = 50
SEARCH_HITS = 100  # hits per search page
SEARCH_SPAN = 50_000  # message ids one search page scans at most, so a search never reads the whole table
EXPORT_CHUNK = 500  # rows read per query while exporting
MAX_KEY_LENGTH = 255  # sessions.session_key is String(255)

_T = TypeVar("_T")
_m, _s = messages.c, sessions.c


def like_pattern(text: str) -> str:
    """`text` as a LIKE substring pattern with its %, _ and \\ matched literally (escape character \\)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _prefix_pattern(text: str) -> str:
    return like_pattern(text)[1:]  # no leading %: the key starts with it


@dataclass(frozen=True, slots=True)
class KeyParts:
    """What a session key says: `qq:private:<user>`, `qq:group:<group>:<user>`, `qq:group:<group>`."""

    platform: str
    kind: str  # "private" / "member" / "group" / "" when the key has another shape
    user_id: str
    group_id: str


def parse_session_key(key: str) -> KeyParts:
    """Split a session key into platform, kind and ids; unknown shapes keep their whole tail as the id."""
    platform, _, rest = key.partition(":")
    kind, _, ids = rest.partition(":")
    if kind == "private" and ids:
        return KeyParts(platform, "private", ids, "")
    if kind == "group" and ids:
        group_id, _, user_id = ids.partition(":")
        return KeyParts(platform, "member" if user_id else "group", user_id, group_id)
    return KeyParts(platform, "", rest, "")


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One row of the sessions table with its message count (reset markers not counted)."""

    key: str
    updated_at: float
    preset: str
    model: str
    account: str
    reply_mode: str
    cleared_before: int
    messages: int
    voice: str = ""  # last and defaulted: callers build summaries of unknown sessions positionally

    @property
    def parts(self) -> KeyParts:
        return parse_session_key(self.key)


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """Where the next page of the session list starts: after this (updated_at, key)."""

    updated_at: float
    key: str

    def encode(self) -> str:
        return f"{self.updated_at!r}|{self.key}"

    @classmethod
    def decode(cls, text: str) -> SessionCursor:
        """Raises ValueError for anything `encode` did not make."""
        at, sep, key = text.partition("|")
        updated_at = float(at)
        if not sep or not key or len(key) > MAX_KEY_LENGTH or not math.isfinite(updated_at):
            raise ValueError("bad session cursor")
        return cls(updated_at, key)


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[SessionSummary]
    next_cursor: SessionCursor | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One messages row as stored, hidden ones and reset markers included."""

    id: int
    session_key: str
    role: str
    content: str
    tokens: int
    hidden: bool
    created_at: float

    @property
    def is_reset(self) -> bool:
        return self.role == RESET_ROLE

    @property
    def rolled_back(self) -> bool:
        """A user/assistant row hidden by rollback (markers are hidden too, but are not turns)."""
        return self.hidden and not self.is_reset

    def as_json(self) -> dict[str, Any]:
        """For the export: every column, the time as ISO 8601 with the server's UTC offset."""
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "tokens": self.tokens,
            "hidden": self.hidden,
            "rolled_back": self.rolled_back,
            "created_at": iso_time(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A row on a session's page; `inferred` marks a reset known only from `cleared_before`
    (made before markers were stored), `earlier` a row of a conversation before the latest reset."""

    message: StoredMessage
    earlier: bool
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[HistoryEntry]
    next_before: int | None  # the id cursor of the older page, None at the oldest


@dataclass(frozen=True, slots=True)
class SearchPage:
    hits: list[StoredMessage]
    next_before: int | None  # continue the search below this id; None when nothing older is left


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


_MESSAGE_COLUMNS = (_m.id, _m.session_key, _m.role, _m.content, _m.tokens, _m.hidden, _m.created_at)


def _message(row: Any) -> StoredMessage:
    return StoredMessage(
        int(row[0]), row[1], row[2], row[3] or "", int(row[4] or 0), bool(row[5]), float(row[6] or 0.0)
    )


class HistoryBrowser:
    """The console's read-only queries over `messages` and `sessions`. Every method raises StorageError."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _read(self, action: str, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        try:
            async with self._engine.connect() as conn:
                return await work(conn)
        except DB_ERRORS as exc:
            raise failed("history browser", action, exc) from exc

    # --- sessions -------------------------------------------------------------------------------

    @staticmethod
    def _summaries() -> Select[Any]:
        count = (
            select(func.count(_m.id))
            .where(_m.session_key == _s.session_key, _m.role != RESET_ROLE)
            .correlate(sessions)
            .scalar_subquery()
        )
        return select(
            _s.session_key,
            _s.updated_at,
            _s.preset,
            _s.model,
            _s.account,
            _s.reply_mode,
            _s.cleared_before,
            count,
            _s.voice,
        )

    @staticmethod
    def _summary(row: Any) -> SessionSummary:
        return SessionSummary(
            row[0],
            float(row[1] or 0.0),
            row[2],
            row[3],
            row[4],
            row[5],
            int(row[6] or 0),
            int(row[7] or 0),
            row[8] or "",
        )

    async def sessions(
        self,
        *,
        platform: str = "",
        id_contains: str = "",
        after: SessionCursor | None = None,
        limit: int = SESSIONS_PER_PAGE,
    ) -> SessionPage:
        """Sessions with the newest activity first; `platform` is the key's first part, `id_contains` a
        substring of its ids in any case."""
        query = self._summaries()
        if platform:
            query = query.where(_s.session_key.like(_prefix_pattern(platform + ":"), escape="\\"))
        if id_contains:
            ids = func.substr(_s.session_key, len(platform) + 2) if platform else _s.session_key
            # ilike: SQLite's LIKE ignores ASCII case, PostgreSQL's and a binary collation's do not.
            query = query.where(ids.ilike(like_pattern(id_contains), escape="\\"))
        if after is not None:
            query = query.where(
                or_(
                    _s.updated_at < after.updated_at,
                    and_(_s.updated_at == after.updated_at, _s.session_key < after.key),
                )
            )
        query = query.order_by(_s.updated_at.desc(), _s.session_key.desc()).limit(limit + 1)

        async def read(conn: AsyncConnection) -> list[SessionSummary]:
            return [self._summary(row) for row in (await conn.execute(query)).all()]

        found = await self._read("listing sessions", read)
        if len(found) <= limit:
            return SessionPage(found, None)
        last = found[limit - 1]
        return SessionPage(found[:limit], SessionCursor(last.updated_at, last.key))

    async def session(self, key: str) -> SessionSummary | None:
        """One session's summary; None when the sessions table has no row for it."""
        query = self._summaries().where(_s.session_key == key)

        async def read(conn: AsyncConnection) -> SessionSummary | None:
            row = (await conn.execute(query)).first()
            return self._summary(row) if row is not None else None

        return await self._read("reading a session", read)

    # --- one session's rows ---------------------------------------------------------------------

    async def history(
        self, key: str, *, before: int | None = None, cleared_before: int = 0, limit: int = MESSAGES_PER_PAGE
    ) -> HistoryPage:
        """A page of the session's rows, newest first, below id `before`; resets and rollbacks included."""
        query = select(*_MESSAGE_COLUMNS).where(*self._below(key, before)).order_by(_m.id.desc()).limit(limit + 1)

        async def read(conn: AsyncConnection) -> list[StoredMessage]:
            return [_message(row) for row in (await conn.execute(query)).all()]

        rows = await self._read("reading a session's messages", read)
        more = len(rows) > limit
        rows = rows[:limit]
        return HistoryPage(_entries(rows, cleared_before), rows[-1].id if more else None)

    @staticmethod
    def _below(key: str, before: int | None) -> list[ColumnElement[bool]]:
        where = [_m.session_key == key]
        if before is not None:
            where.append(_m.id < before)
        return where

    async def export(self, key: str, *, chunk: int = EXPORT_CHUNK) -> AsyncIterator[list[StoredMessage]]:
        """Every row of the session, oldest first, `chunk` rows per query (a connection per chunk,
        so a slow download never holds one)."""
        after = 0
        while True:
            query = (
                select(*_MESSAGE_COLUMNS).where(_m.session_key == key, _m.id > after).order_by(_m.id.asc()).limit(chunk)
            )

            async def read(conn: AsyncConnection, query: Select[Any] = query) -> list[StoredMessage]:
                return [_message(row) for row in (await conn.execute(query)).all()]

            rows = await self._read("exporting a session", read)
            if rows:
                yield rows
            if len(rows) < chunk:
                return
            after = rows[-1].id

    # --- search ---------------------------------------------------------------------------------

    async def search(
        self, text: str, *, key: str = "", before: int | None = None, limit: int = SEARCH_HITS
    ) -> SearchPage:
        """Messages containing `text` (case-insensitive), newest first, in every session or in `key`'s.

        One call scans at most SEARCH_SPAN ids (of `key`'s rows when given) below `before`; the
        page's `next_before` continues the search further back.
        """
        if not text:
            raise ValueError("empty search text")

        async def read(conn: AsyncConnection) -> SearchPage:
            low, older = await (self._session_span(conn, key, before) if key else self._global_span(conn, before))
            where = [_m.id >= low, _m.role != RESET_ROLE, _m.content.ilike(like_pattern(text), escape="\\")]
            if before is not None:
                where.append(_m.id < before)
            if key:
                where.append(_m.session_key == key)
            query = select(*_MESSAGE_COLUMNS).where(*where).order_by(_m.id.desc()).limit(limit + 1)
            hits = [_message(row) for row in (await conn.execute(query)).all()]
            if len(hits) > limit:
                return SearchPage(hits[:limit], hits[limit - 1].id)
            return SearchPage(hits, low if older else None)

        return await self._read("searching messages", read)

    @staticmethod
    async def _global_span(conn: AsyncConnection, before: int | None) -> tuple[int, bool]:
        """The lowest id to scan below `before` (or the newest row), and whether older ids exist."""
        top = before
        if top is None:
            newest = (await conn.execute(select(func.max(_m.id)))).scalar()
            top = int(newest or 0) + 1
        low = max(1, top - SEARCH_SPAN)
        return low, low > 1

    @staticmethod
    async def _session_span(conn: AsyncConnection, key: str, before: int | None) -> tuple[int, bool]:
        """The lowest id among the session's newest SEARCH_SPAN rows below `before`, and whether
        the session has rows older than those."""
        newest = select(_m.id).where(*HistoryBrowser._below(key, before)).order_by(_m.id.desc()).limit(SEARCH_SPAN)
        span = newest.subquery()
        low, count = (await conn.execute(select(func.min(span.c.id), func.count()).select_from(span))).one()
        return int(low or 0), int(count or 0) >= SEARCH_SPAN


def _entries(rows: list[StoredMessage], cleared_before: int) -> list[HistoryEntry]:
    """Rows as page entries, with a marker put in for a reset stored before markers existed."""
    entries: list[HistoryEntry] = []
    for row in rows:
        if row.id == cleared_before and not row.is_reset:
            gap = StoredMessage(row.id, row.session_key, RESET_ROLE, "", 0, True, 0.0)
            entries.append(HistoryEntry(gap, earlier=False, inferred=True))
        entries.append(HistoryEntry(row, earlier=row.id <= cleared_before))
    return entries


def check_key(key: str) -> str:
    """A session key from a request, stripped. Raises ValueError with a one-line reason."""
    key = key.strip()
    if not key:
        raise ValueError("缺少会话 key (missing session key)")
    if len(key) > MAX_KEY_LENGTH or any(ord(ch) < 32 for ch in key):
        raise ValueError("会话 key 无效 (bad session key)")
    return key


__all__ = [
    "HistoryBrowser",
    "HistoryEntry",
    "HistoryPage",
    "KeyParts",
    "SearchPage",
    "SessionCursor",
    "SessionPage",
    "SessionSummary",
    "StoredMessage",
    "check_key",
    "iso_time",
    "like_pattern",
    "parse_session_key",
]
