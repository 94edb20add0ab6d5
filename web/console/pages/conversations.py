"""会话 Conversations: sessions by platform and user/group, a session's history, search, reset and JSONL export."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from loguru import logger

from core.errors import StorageError
from storage.browse import (
    MESSAGES_PER_PAGE,
    SEARCH_HITS,
    SEARCH_SPAN,
    HistoryBrowser,
    SessionCursor,
    SessionSummary,
    StoredMessage,
    check_key,
    parse_session_key,
)
from storage.errors import DB_ERRORS, short
from storage.transfer import history_records, jsonl

if TYPE_CHECKING:
    from web.console.app import Console

ORDER = 20
PLATFORMS = ("qq", "qqbot", "http", "console", "web")  # suggestions; any platform name is accepted
MAX_FILTER_LENGTH = 64
MAX_SEARCH_LENGTH = 200
KINDS = {"private": "私聊", "group": "群聊", "member": "成员"}
_PLATFORM = re.compile(r"[A-Za-z0-9_.-]*")
_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
log = logger.bind(adapter="console")
_T = TypeVar("_T")


class BadInput(ValueError):
    """A query or form value the page cannot use; its text is the one-line reason shown."""


def setup(console: Console) -> None:
    pages = ConversationPages(console)
    console.page("/conversations", "会话", pages.list_sessions)
    console.get("/conversations/session", pages.session)
    console.get("/conversations/search", pages.search)
    console.get("/conversations/export", pages.export)
    console.post("/conversations/reset", pages.reset)


class ConversationPages:
    """The handlers; reads go through storage.browse on the store's engine."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @property
    def browser(self) -> HistoryBrowser:
        return HistoryBrowser(self.console.bot.store.engine)

    async def list_sessions(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        platform = _platform(query)
        id_contains = _text(query, "id", MAX_FILTER_LENGTH)
        after = _cursor(query)
        page = await _storage(self.browser.sessions(platform=platform, id_contains=id_contains, after=after))
        filters = {"platform": platform, "id": id_contains}
        next_url = ""
        if page.next_cursor is not None:
            next_url = _url("/conversations", **filters, after=page.next_cursor.encode())
        return self.console.render(
            request,
            "conversations.html",
            sessions=[_session_view(summary) for summary in page.sessions],
            platform=platform,
            id_contains=id_contains,
            platforms=PLATFORMS,
            paged=after is not None,
            first_url=_url("/conversations", **filters),
            next_url=next_url,
        )

    async def session(self, request: web.Request) -> web.StreamResponse:
        key = _key(request.query.get("key", ""))
        before = _before(request.query)
        summary = await _storage(self.browser.session(key))
        cleared_before = summary.cleared_before if summary is not None else 0
        page = await _storage(self.browser.history(key, before=before, cleared_before=cleared_before))
        if summary is None and not page.entries:
            raise _not_found()
        next_url = _url("/conversations/session", key=key, before=page.next_before) if page.next_before else ""
        return self.console.render(
            request,
            "conversations_session.html",
            key=key,
            session=_session_view(summary) if summary is not None else _unknown_session(key),
            entries=page.entries,
            paged=before is not None,
            per_page=MESSAGES_PER_PAGE,
            first_url=_url("/conversations/session", key=key),
            next_url=next_url,
            export_url=_url("/conversations/export", key=key),
            done=request.query.get("done", "") == "reset",
        )

    async def search(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        text = _text(query, "q", MAX_SEARCH_LENGTH, strip=False)
        key = _key(query["key"]) if query.get("key", "").strip() else ""
        before = _before(query)
        hits: list[dict[str, Any]] = []
        next_url = ""
        if text.strip():
            page = await _storage(self.browser.search(text, key=key, before=before))
            hits = [_hit_view(hit) for hit in page.hits]
            if page.next_before:
                next_url = _url("/conversations/search", q=text, key=key, before=page.next_before)
        return self.console.render(
            request,
            "conversations_search.html",
            q=text,
            key=key,
            hits=hits,
            searched=bool(text.strip()),
            paged=before is not None,
            first_url=_url("/conversations/search", q=text, key=key),
            next_url=next_url,
            max_hits=SEARCH_HITS,
            span=SEARCH_SPAN,
        )

    async def reset(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        value = form.get("key", "")
        key = _key(value if isinstance(value, str) else "")
        bot = self.console.bot
        try:
            # A running answer is stopped first, so it cannot be stored after the reset.
            await bot.manager.stop_session(key)
            await bot.store.reset(key)
        except StorageError as exc:
            raise _unavailable(exc) from exc
        bot.manager.sessions.touched(key, time.time())  # a fresh conversation must not be auto-reset again
        log.info("console: session {} reset", key)
        target = _url("/conversations/session", key=key, done="reset")
        if request.headers.get("HX-Request") == "true":
            return web.Response(status=200, headers={"HX-Redirect": target})
        raise web.HTTPSeeOther(target)

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The session in the transfer format of `--export-history` (storage/transfer.py), as a download."""
        key = _key(request.query.get("key", ""))
        browser = self.browser
        summary = await _storage(browser.session(key))
        if summary is None and not (await _storage(browser.history(key, limit=1))).entries:
            raise _not_found()
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{_file_name(key)}"',
            }
        )
        await response.prepare(request)
        try:
            async for records in history_records(self.console.bot.store.engine, "web console", session_key=key):
                await response.write("".join(jsonl(record) for record in records).encode())
        except DB_ERRORS as exc:
            # Headers are gone: drop the connection before the last chunk, so the download fails
            # visibly instead of ending like a complete file.
            log.warning("console: the export of session {} stopped: the database failed: {}", key, short(exc))
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response


# --- request values -------------------------------------------------------------------------------


def _text(query: Mapping[str, str], name: str, limit: int, *, strip: bool = True) -> str:
    value = query.get(name, "")
    value = value.strip() if strip else value
    if len(value) > limit:
        raise _bad(f"{name} 太长 (too long: at most {limit} characters)")
    if any(ord(ch) < 32 and ch not in "\t\n" for ch in value):
        raise _bad(f"{name} 含有控制字符 (control characters)")
    return value


def _platform(query: Mapping[str, str]) -> str:
    platform = _text(query, "platform", MAX_FILTER_LENGTH)
    if not _PLATFORM.fullmatch(platform):
        raise _bad("platform 只能含字母、数字、_ . - (letters, digits, _ . - only)")
    return platform


def _cursor(query: Mapping[str, str]) -> SessionCursor | None:
    text = query.get("after", "")
    if not text:
        return None
    try:
        return SessionCursor.decode(text)
    except ValueError:
        raise _bad("after 无效 (bad page cursor)") from None


def _before(query: Mapping[str, str]) -> int | None:
    text = query.get("before", "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) <= 0:
        raise _bad("before 必须是正整数 (must be a positive integer)")
    return int(text)


def _key(value: str) -> str:
    try:
        return check_key(value)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _bad(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=reason, content_type="text/plain")


def _not_found() -> web.HTTPNotFound:
    return web.HTTPNotFound(text="没有这个会话 (no such session)", content_type="text/plain")


def _unavailable(exc: StorageError) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=f"数据库暂时不可用 (database unavailable): {exc}", content_type="text/plain")


async def _storage(work: Awaitable[_T]) -> _T:
    """Await a browse query; a database failure becomes a 503 with one line (the detail is logged)."""
    try:
        return await work
    except StorageError as exc:
        raise _unavailable(exc) from exc


# --- views ----------------------------------------------------------------------------------------


def _url(path: str, **params: Any) -> str:
    present = {name: value for name, value in params.items() if value not in (None, "")}
    return f"{path}?{urlencode(present)}" if present else path


def _session_view(summary: SessionSummary) -> dict[str, Any]:
    parts = summary.parts
    return {
        "key": summary.key,
        "url": _url("/conversations/session", key=summary.key),
        "platform": parts.platform,
        "kind": KINDS.get(parts.kind, "其他"),
        "user_id": parts.user_id,
        "group_id": parts.group_id,
        "messages": summary.messages,
        "updated_at": summary.updated_at,
        "preset": summary.preset,
        "model": summary.model,
        "account": summary.account,
        "reply_mode": summary.reply_mode,
    }


def _unknown_session(key: str) -> dict[str, Any]:
    """Rows without a sessions row (written by hand, or by an older version)."""
    view = _session_view(SessionSummary(key, 0.0, "", "", "", "", 0, 0))
    view["messages"] = None
    return view


def _hit_view(hit: StoredMessage) -> dict[str, Any]:
    parts = parse_session_key(hit.session_key)
    return {
        "message": hit,
        # The session's page that starts with this message.
        "url": _url("/conversations/session", key=hit.session_key, before=hit.id + 1) + f"#m{hit.id}",
        "platform": parts.platform,
        "kind": KINDS.get(parts.kind, "其他"),
    }


def _file_name(key: str) -> str:
    return f"{_FILE_NAME_UNSAFE.sub('_', key).strip('_')[:100] or 'session'}.jsonl"
