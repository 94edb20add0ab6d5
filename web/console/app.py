"""The console's pages on the `[web]` server: login, navigation, templates and the page modules."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from core.config import WebSettings
from web.console.auth import CSRF_FIELD, SESSION, Clock, Guard, Session
from web.console.bot import ConsoleBot

if TYPE_CHECKING:
    import jinja2

WEB = Path(__file__).resolve().parent.parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    """Owns the guard and the templates; each page module adds its routes and a navigation entry."""

    def __init__(self, settings: WebSettings, bot: ConsoleBot, clock: Clock = time.time) -> None:
        self.settings = settings
        self.bot = bot
        self.clock = clock
        self.guard = Guard(settings, clock, lambda: bot.settings.web)
        self.nav: list[tuple[str, str]] = []
        self._templates: jinja2.Environment | None = None
        self._app: web.Application | None = None

    @property
    def templates(self) -> jinja2.Environment:
        """The page templates, loaded with Jinja2 when the first page is shown (not at start)."""
        if self._templates is None:
            import jinja2

            self._templates = jinja2.Environment(
                loader=jinja2.FileSystemLoader(WEB / "templates"),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            self._templates.filters["when"] = _when
            self._templates.filters["ago"] = lambda at: _ago(at, self.clock())
        return self._templates

    # --- wiring ---------------------------------------------------------------------------------

    def setup(self, app: web.Application) -> None:
        """Add the guard, the login routes, static files and every page to `app`."""
        from web.console.pages import pages

        self._app = app
        app.middlewares.append(self.guard.middleware)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_static("/static/", WEB / "static", append_version=True)
        for setup in pages():
            setup(self)

    def page(self, path: str, title: str, handler: Handler) -> None:
        """A page in the navigation bar, served at GET `path`."""
        self.nav.append((path, title))
        self.get(path, handler)

    def get(self, path: str, handler: Handler) -> None:
        self._router.add_get(path, self._ready(handler))

    def post(self, path: str, handler: Handler) -> None:
        self._router.add_post(path, self._ready(handler))

    def on_shutdown(self, callback: Callable[[web.Application], Awaitable[None]]) -> None:
        """Run `callback` when the server stops, before open requests are waited for (end live streams here)."""
        if self._app is None:
            raise RuntimeError("Console.setup(app) first")
        self._app.on_shutdown.append(callback)

    @property
    def _router(self) -> web.UrlDispatcher:
        if self._app is None:
            raise RuntimeError("Console.setup(app) first")
        return self._app.router

    def _ready(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.bot.ready:
                return self.render(request, "starting.html", status=503)
            return await handler(request)

        return guarded

    # --- rendering ------------------------------------------------------------------------------

    def render(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        """`template` with the session's CSRF token, the navigation and `values`."""
        session = request.get(SESSION)
        html = self.templates.get_template(template).render(
            csrf=session.csrf if session is not None else "",
            csrf_field=CSRF_FIELD,
            logged_in=session is not None,
            nav=self.nav,
            path=request.path,
            **values,
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    # --- login ----------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.Response:
        if not self.guard.password:
            return self.render(request, "setup.html", host=self.settings.host, port=self.settings.port)
        return self.render(request, "login.html", next=_local_path(request.query.get("next", "/")), error="")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not self.guard.password:
            raise web.HTTPSeeOther("/login")
        form = await request.post()
        password, target = form.get("password", ""), form.get("next", "/")
        target = _local_path(target if isinstance(target, str) else "/")
        outcome = self.guard.login(request.remote or "?", password if isinstance(password, str) else "")
        if isinstance(outcome, Session):
            response = web.HTTPSeeOther(target)
            self.guard.set_cookie(response, outcome, request)
            raise response
        if isinstance(outcome, float):
            error = f"尝试次数过多，请 {int(outcome) + 1} 秒后再试 (too many attempts: wait {int(outcome) + 1} s)"
            return self.render(request, "login.html", status=429, next=target, error=error)
        return self.render(request, "login.html", status=401, next=target, error="密码错误 (wrong password)")

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.guard.logout(request[SESSION])
        response = web.HTTPSeeOther("/login")
        response.del_cookie("console_session", path="/")
        raise response


def _local_path(target: str) -> str:
    """`target` when it is a path on this server, else "/" (a login must not redirect elsewhere)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "—"


def _ago(at: float | None, now: float) -> str:
    """How long ago, in Chinese: 刚刚, 12 秒前, 3 分钟前, 5 小时前, 2 天前."""
    if not at:
        return "—"
    seconds = max(0, int(now - at))
    if seconds < 5:
        return "刚刚"
    for size, unit in ((86400, "天"), (3600, "小时"), (60, "分钟")):
        if seconds >= size:
            return f"{seconds // size} {unit}前"
    return f"{seconds} 秒前"
