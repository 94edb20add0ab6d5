"""loguru set-up, done once at start: console always, a rotated file when `[log] file` is set, and
an in-memory ring of the recent lines (RING) that the web console shows and follows live.

Every record passes through one patcher: configured secrets and credential-looking strings are
redacted from the message and from a logged exception's text, and control characters in the
message are escaped, so that no secret reaches a log line and no value can forge or clear one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

from loguru import logger

from core.errors import escape_control

if TYPE_CHECKING:
    from loguru import Record

CONSOLE_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[adapter]}</cyan> {message}"
)
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[adapter]} {name}:{line} {message}"
RING_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[adapter]} {message}"
RING_SIZE = 1000  # lines kept for the console's log page
FOLLOWER_QUEUE = 500  # lines a live follower may fall behind before its oldest are dropped

REDACTED = "***"
# Shorter values are not redacted: masking every "1" or "ab" would make the log unreadable, and a
# secret that short protects nothing anyway.
MIN_SECRET_LENGTH = 4
# Credentials that look like credentials, configured or not: a provider echoing "Bearer sk-...",
# OpenAI-style keys, and token parameters in URLs.
_GENERIC = (
    (re.compile(r"(?i)\b(bearer|qqbot)(\s+)[A-Za-z0-9._~+/=\-]{6,}"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}"), f"sk-{REDACTED}"),
    (
        re.compile(
            r"(?i)([?&](?:access_token|token|api_key|apikey|key|secret|password|verifykey|session_?key|sig)=)"
            r"[^&#\s\"'<>]+"
        ),
        rf"\1{REDACTED}",
    ),
)
_secrets: re.Pattern[str] | None = None
_known: frozenset[str] = frozenset()


def setup_logging(
    level: str = "INFO",
    file: str = "",
    rotation: str = "10 MB",
    retention: int = 7,
    secrets: Iterable[str] | None = None,
) -> None:
    """Route all logs to stderr (and to a rotated file when `file` is set), redacting `secrets`.

    Secrets accumulate: one set by an earlier call (before a config reload) stays redacted.
    """
    if secrets is not None:
        set_secrets(secrets)
    logger.remove()
    logger.configure(extra={"adapter": "-"}, patcher=redact_record)
    logging.basicConfig(handlers=[_LibraryLogs()], level=logging.WARNING, force=True)
    logger.add(sys.stderr, level=level, format=CONSOLE_FORMAT, backtrace=False, diagnose=False)
    # `remove()` above took the ring's sink too: one sink again, the lines and followers stay.
    logger.add(RING.write, level=level, format=RING_FORMAT, colorize=False, backtrace=False, diagnose=False)
    if file:
        try:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            logger.add(
                file,
                level=level,
                format=FILE_FORMAT,
                rotation=rotation,
                retention=retention,
                encoding="utf-8",
                enqueue=True,
                backtrace=False,
                diagnose=False,
            )
        except (OSError, ValueError) as exc:  # the loader checks the file; this is a race with the disk
            logger.error("log file {} cannot be used ({}); logging to the console only", file, exc)


class _LibraryLogs(logging.Handler):
    """Libraries' own warnings (aiohttp, SQLAlchemy …) go through loguru: one format, redacted, escaped."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "aiohttp.server":
            # A client's malformed request (a NUL in a header, a broken request line): aiohttp has
            # answered it with 400 already; a traceback per hostile request would flood the log.
            logger.bind(adapter="http").debug("bad HTTP request: {}", record.getMessage())
            return
        level = record.levelname if record.levelname in ("WARNING", "ERROR", "CRITICAL") else "WARNING"
        logger.bind(adapter=record.name).opt(exception=record.exc_info).log(level, "{}", record.getMessage())


def set_secrets(secrets: Iterable[str], *, replace: bool = False) -> None:
    """Redact these values (and their URL-encoded forms) from every log record from now on.

    They are added to those set before unless `replace` is true; values shorter than
    MIN_SECRET_LENGTH are ignored. Installs the redacting patcher if it is not installed yet.
    """
    global _secrets, _known
    known = set() if replace else set(_known)
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH:
            known |= {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    _known = frozenset(known)
    # longest first, so a secret that contains another is masked whole
    ordered = sorted(_known, key=len, reverse=True)
    _secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None
    logger.configure(patcher=redact_record)


def redact(text: str) -> str:
    """`text` with every configured secret and every credential-looking string replaced by ***."""
    pattern = _secrets
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for generic, replacement in _GENERIC:
        text = generic.sub(replacement, text)
    return text


class RedactedError(Exception):
    """Stands in for a logged exception whose text held a secret: same traceback, redacted text."""


def redact_record(record: Record) -> None:
    """The loguru patcher: redact the message and the exception, escape control characters."""
    try:
        message = record["message"]
        clean = escape_control(redact(message))
        if clean != message:
            record["message"] = clean
        caught = record["exception"]
        if caught is not None and caught.value is not None:
            value = _redacted_exception(caught.value, {}, 0)
            if value is not caught.value:
                record["exception"] = caught._replace(type=type(value), value=value)
    except Exception:  # a patcher that raises would make the logging call itself raise
        record["message"] = "(log message withheld: redaction failed)"
        record["exception"] = None


def _redacted_exception(exc: BaseException, done: dict[int, BaseException], depth: int) -> BaseException:
    """`exc` itself when no text in it or in its chain holds a secret, else a redacted stand-in."""
    if id(exc) in done:
        return done[id(exc)]
    done[id(exc)] = exc  # a cycle in the chain ends here
    if depth > 50:
        return RedactedError("(earlier exceptions omitted)")
    text = _text_of(exc)
    notes = [str(note) for note in getattr(exc, "__notes__", None) or ()]
    cause = exc.__cause__ and _redacted_exception(exc.__cause__, done, depth + 1)
    context = exc.__context__ and _redacted_exception(exc.__context__, done, depth + 1)
    members = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else []
    clean_members = [_redacted_exception(member, done, depth + 1) for member in members]
    clean_text, clean_notes = redact(text), [redact(note) for note in notes]
    if (
        clean_text == text
        and clean_notes == notes
        and cause is exc.__cause__
        and context is exc.__context__
        and all(a is b for a, b in zip(clean_members, members, strict=True))
    ):
        return exc
    name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    stand_in: BaseException
    if isinstance(exc, BaseExceptionGroup):
        stand_in = BaseExceptionGroup(f"{name}: {redact(exc.message)}", clean_members)
    else:
        stand_in = RedactedError(f"{name}: {clean_text}" if clean_text else name)
    stand_in.__cause__ = cause
    stand_in.__context__ = context
    stand_in.__suppress_context__ = exc.__suppress_context__
    stand_in.__traceback__ = exc.__traceback__
    for note in clean_notes:
        stand_in.add_note(note)
    done[id(exc)] = stand_in
    return stand_in


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return ""


# --- the ring of recent lines -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    """One formatted, redacted log entry (a logged traceback follows its message after newlines)."""

    seq: int  # 1, 2, 3 … in the order written; never reused while the process runs
    level: str
    levelno: int
    text: str


class LogFollower:
    """A live reader of the ring: a bounded queue that drops its oldest lines when the reader lags.

    The ring offers lines from whichever thread logs; `next()` is awaited on the reader's loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, min_levelno: int, capacity: int) -> None:
        self.min_levelno = min_levelno
        self.capacity = capacity
        self._loop = loop
        self._lock = threading.Lock()
        self._lines: deque[LogLine] = deque()
        self._dropped = 0
        self._closed = False
        self._wake = asyncio.Event()
        self._wake_pending = False

    def offer(self, line: LogLine) -> None:
        """Queue `line` if its level is wanted; never blocks and never raises."""
        if line.levelno < self.min_levelno:
            return
        with self._lock:
            if len(self._lines) >= self.capacity:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append(line)
        self._signal()

    def close(self) -> None:
        """End the follow: `next()` returns `closed` True from now on."""
        self._closed = True
        self._signal()

    @property
    def closed(self) -> bool:
        return self._closed

    def _signal(self) -> None:
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the reader's loop is closed: nobody is waiting any more
            self._closed = True

    async def next(self, timeout: float) -> tuple[list[LogLine], int]:
        """The queued lines and how many were dropped before them, waiting up to `timeout` seconds
        for any (then both are empty)."""
        if not self._lines and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        with self._lock:
            self._wake.clear()
            self._wake_pending = False
            lines, dropped = list(self._lines), self._dropped
            self._lines.clear()
            self._dropped = 0
        return lines, dropped


class LogRing:
    """The last `size` log lines in memory, fed by a loguru sink after redaction and escaping, and
    offered to live followers. Thread-safe: loguru calls the sink from the logging thread."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self.size = size
        # Names this process's numbering: a reader resuming after a restart must not skip lines.
        self.boot = token_hex(4)
        self._lock = threading.Lock()
        self._lines: deque[LogLine] = deque(maxlen=size)
        self._followers: set[LogFollower] = set()
        self._seq = 0

    def write(self, message: object) -> None:
        """The loguru sink: `message` is the formatted line, its `.record` the record."""
        record = getattr(message, "record", None)
        level = record["level"] if record is not None else None
        # Redacted again as a last guard: this text leaves the process through the web console.
        text = redact(str(message).rstrip("\n"))
        with self._lock:
            self._seq += 1
            line = LogLine(
                self._seq,
                level.name if level is not None else "INFO",
                level.no if level is not None else logging.INFO,
                text,
            )
            self._lines.append(line)
            followers = list(self._followers)
        for follower in followers:
            if follower.closed:  # its loop ended without unfollowing
                self.unfollow(follower)
            else:
                follower.offer(line)

    def recent(self, min_levelno: int = 0) -> tuple[list[LogLine], int]:
        """The kept lines at `min_levelno` or above, oldest first, and the `seq` of the last line
        written so far (to follow on from without a gap or a repeat)."""
        with self._lock:
            lines, last = list(self._lines), self._seq
        return [line for line in lines if line.levelno >= min_levelno], last

    def follow(
        self, min_levelno: int = 0, after: int | None = None, capacity: int = FOLLOWER_QUEUE
    ) -> tuple[LogFollower, list[LogLine]]:
        """A new follower of lines written from now on, and (when `after` is given) the kept lines
        after that `seq`: taken together, so that no line is missed or seen twice."""
        follower = LogFollower(asyncio.get_running_loop(), min_levelno, capacity)
        with self._lock:
            self._followers.add(follower)
            kept = list(self._lines) if after is not None else []
        backlog = [line for line in kept if line.levelno >= min_levelno and after is not None and line.seq > after]
        return follower, backlog

    def unfollow(self, follower: LogFollower) -> None:
        """Stop offering lines to `follower` (it is closed)."""
        with self._lock:
            self._followers.discard(follower)
        follower.close()

    def close_followers(self) -> None:
        """End every live follow (the web server is stopping)."""
        with self._lock:
            followers = list(self._followers)
            self._followers.clear()
        for follower in followers:
            follower.close()

    @property
    def followers(self) -> int:
        return len(self._followers)

    @property
    def last_seq(self) -> int:
        return self._seq


RING = LogRing()
