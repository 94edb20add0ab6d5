"""Who may use the console: the password, session cookies, CSRF tokens, login throttling and the Host check."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from adapters.listen import secret_matches
from core.config import LOOPBACK, WebSettings
from web.console.password import password_matches

COOKIE = "console_session"
IDLE_SECONDS = 12 * 3600.0  # a session unused this long ends
MAX_SECONDS = 7 * 86400.0  # and every session ends after this, used or not
MAX_SESSIONS = 64  # the oldest goes when more log in
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Paths anyone may open: the login page, static files, and what the server itself guards.
PUBLIC_PREFIXES = ("/login", "/static/", "/healthz", "/metrics")

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    token: str
    csrf: str
    created: float
    seen: float


SESSION = web.RequestKey("session", Session)  # the checked session, for the handlers


@dataclass(slots=True)
class _Tries:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class Throttle:
    """Failed logins per client address: after `free` failures within `window` seconds, each further
    failure locks the address out for 30 s, doubling up to 15 minutes."""

    def __init__(self, clock: Clock, free: int = 5, window: float = 900.0, size: int = 4096) -> None:
        self.clock = clock
        self.free = free
        self.window = window
        self.size = size
        self._tries: OrderedDict[str, _Tries] = OrderedDict()

    def wait(self, who: str) -> float:
        """Seconds before `who` may try again (0: now)."""
        tries = self._tries.get(who)
        return max(0.0, tries.locked_until - self.clock()) if tries is not None else 0.0

    def failed(self, who: str) -> None:
        now = self.clock()
        tries = self._tries.pop(who, None) or _Tries()
        self._tries[who] = tries  # most recent last; the least recent goes when the table is full
        while tries.failures and now - tries.failures[0] > self.window:
            tries.failures.popleft()
        tries.failures.append(now)
        over = len(tries.failures) - self.free
        if over >= 0:
            tries.locked_until = now + min(900.0, 30.0 * 2 ** min(over, 10))
        if len(self._tries) > self.size:
            self._tries.popitem(last=False)

    def succeeded(self, who: str) -> None:
        self._tries.pop(who, None)


class Guard:
    """Checks every console request before any page code runs (an aiohttp middleware)."""

    def __init__(
        self, settings: WebSettings, clock: Clock = time.time, current: Callable[[], WebSettings] | None = None
    ) -> None:
        self.settings = settings  # as the server started: host and port change only with a restart
        self.current = current or (lambda: settings)  # the password follows config reloads
        self.clock = clock
        self.throttle = Throttle(clock)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._password_seen = self.current().password.get_secret_value()

    @property
    def password(self) -> str:
        """The password in the config now; when it changes, every session ends."""
        password = self.current().password.get_secret_value()
        if password != self._password_seen:
            self._sessions.clear()
        self._password_seen = password
        return password

    # --- sessions -------------------------------------------------------------------------------

    def login(self, who: str, password: str) -> Session | float | None:
        """A new session for the right password; seconds to wait while `who` is throttled; else None."""
        wait = self.throttle.wait(who)
        if wait > 0:
            return wait
        if not password_matches(password, self.password):
            self.throttle.failed(who)
            return None
        self.throttle.succeeded(who)
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._sessions[session.token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def session_of(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one (which is then marked as used)."""
        token = request.cookies.get(COOKIE, "")
        if not token or not self.password:
            return None
        # A dict lookup: tokens are 256 random bits, so its timing cannot be used to guess one.
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > IDLE_SECONDS or now - session.created > MAX_SECONDS:
            del self._sessions[token]
            return None
        session.seen = now
        return session

    def logout(self, session: Session) -> None:
        self._sessions.pop(session.token, None)

    def set_cookie(self, response: web.StreamResponse, session: Session, request: web.Request) -> None:
        response.set_cookie(
            COOKIE,
            session.token,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
            max_age=int(MAX_SECONDS),
        )

    # --- the middleware -------------------------------------------------------------------------

    def host_allowed(self, request: web.Request) -> bool:
        """On loopback, only loopback names in `Host`: a page elsewhere that rebinds its own domain
        to 127.0.0.1 (DNS rebinding) must not reach the console through the user's browser."""
        if self.settings.host not in LOOPBACK:
            return True
        host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else request.host.split("]")[0] + "]"
        return host in ("127.0.0.1", "localhost", "[::1]")

    def csrf_ok(self, session: Session, given: str) -> bool:
        return bool(given) and secret_matches(given, session.csrf)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._check(request, handler)
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; media-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        if not request.path.startswith("/static/"):
            headers.setdefault("Cache-Control", "no-store")
        return response

    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/metrics"):
            return await handler(request)
        if not self.host_allowed(request):
            return web.Response(status=421, text="Misdirected request: open the console as http://127.0.0.1")
        if request.method in UNSAFE and not self._same_origin(request):
            return web.Response(status=403, text="跨站请求被拒绝 (cross-site request refused)")
        if request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        if not self.password:
            raise web.HTTPSeeOther("/login")  # the login page explains how to set a password
        session = self.session_of(request)
        if session is None:
            if request.method == "GET" and not request.headers.get("HX-Request"):
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
            response = web.Response(status=401, text="请先登录 (log in first)")
            response.headers["HX-Redirect"] = "/login"
            return response
        if request.method in UNSAFE:
            given = request.headers.get(CSRF_HEADER, "")
            if not given and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                value = form.get(CSRF_FIELD, "")
                given = value if isinstance(value, str) else ""
            if not self.csrf_ok(session, given):
                return web.Response(status=403, text="CSRF 令牌无效，请刷新页面 (invalid CSRF token: reload the page)")
        request[SESSION] = session
        return await handler(request)

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A browser names the page a change comes from; it must be this server (absent: not a browser)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
        return origin.split("://", 1)[-1] == request.host
