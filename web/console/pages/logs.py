"""日志 Logs: the recent log lines (redacted, as the console and file get them) and a live tail over SSE."""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING

from aiohttp import web

from core.log import RING, LogFollower, LogLine

if TYPE_CHECKING:
    from web.console.app import Console

ORDER = 70
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}  # the filter's choices; "" shows every line
PING_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
POLL_SECONDS = 1.0  # how often a quiet stream looks whether its client or the server has gone
RETRY_MS = 3000  # how soon a browser reconnects after the stream broke
_POSITION = re.compile(r"([0-9a-f]{1,16})-([0-9]{1,18})")


def setup(console: Console) -> None:
    streams: set[LogFollower] = set()

    async def page(request: web.Request) -> web.Response:
        level = _level(request)
        lines, last = RING.recent(LEVELS.get(level, 0))
        return console.render(
            request,
            "logs.html",
            lines=lines,
            level=level,
            levels=list(LEVELS),
            position=f"{RING.boot}-{last}",
            size=RING.size,
            configured=console.bot.settings.log.level,
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        min_levelno = LEVELS.get(_level(request), 0)
        follower, backlog = RING.follow(min_levelno, _after(request))
        streams.add(follower)
        try:
            return await _tail(request, follower, backlog)
        finally:
            streams.discard(follower)
            RING.unfollow(follower)

    async def server_stopping(app: web.Application) -> None:
        for follower in list(streams):
            follower.close()

    console.page("/logs", "日志", page)
    console.get("/logs/stream", stream)
    # without this a live stream would hold the server's stop for its whole shutdown timeout
    console.on_shutdown(server_stopping)


def _level(request: web.Request) -> str:
    """The `level` query parameter ("" for every line); 400 when it names no level."""
    level = request.query.get("level", "").strip().upper()
    if level and level not in LEVELS:
        raise web.HTTPBadRequest(text=f"未知的日志级别 (unknown level): 请用 {' / '.join(LEVELS)}")
    return level


def _after(request: web.Request) -> int | None:
    """Where a reader resumes: `Last-Event-ID` (a reconnecting browser) or `?after=` (the page's own
    last line), written "<boot>-<seq>"; None: only new lines; 0: every kept line (after a restart)."""
    given = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    if not given:
        return None
    found = _POSITION.fullmatch(given.strip())
    if found is None:
        raise web.HTTPBadRequest(text="after / Last-Event-ID 格式错误 (expected <boot>-<number>)")
    boot, seq = found.groups()
    return int(seq) if boot == RING.boot else 0


async def _tail(request: web.Request, follower: LogFollower, backlog: list[LogLine]) -> web.StreamResponse:
    """Send `backlog`, then each new line as it is logged, until the client or the server goes."""
    # Sent with the first bytes, before the Guard could add its headers to a finished response.
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Accel-Buffering": "no",  # nginx in front: pass each event on at once
        }
    )
    loop = asyncio.get_running_loop()
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        await _send(response, backlog)
        quiet_since = loop.time()
        while not follower.closed and _connected(request):
            lines, dropped = await follower.next(POLL_SECONDS)
            if dropped:
                await response.write(_notice(dropped))
            if lines:
                await _send(response, lines)
            if lines or dropped:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= PING_SECONDS:
                await response.write(b": ping\n\n")
                quiet_since = loop.time()
    except ConnectionError:  # the client went while we wrote
        pass
    return response


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def _send(response: web.StreamResponse, lines: list[LogLine]) -> None:
    if lines:
        await response.write(b"".join(map(_event, lines)))


def _event(line: LogLine) -> bytes:
    """One SSE event per log entry: its position as the id, one `data:` line of JSON (which never
    holds a raw newline, so a logged traceback stays one event)."""
    data = json.dumps(
        {"seq": line.seq, "level": line.level, "levelno": line.levelno, "text": line.text}, ensure_ascii=False
    )
    return f"id: {RING.boot}-{line.seq}\ndata: {data}\n\n".encode()


def _notice(dropped: int) -> bytes:
    text = f"页面跟不上，省略了 {dropped} 行日志 ({dropped} lines dropped: the page fell behind)"
    return f"event: notice\ndata: {json.dumps({'text': text}, ensure_ascii=False)}\n\n".encode()
