"""A logged-in (or not) browser-like client for the web console, through real sockets, for the console tests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import start_bot

PASSWORD = "console-test-password"


class ConsoleClient:
    """Keeps cookies like a browser, reads the page's CSRF token, and sends same-origin changes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.base = f"http://127.0.0.1:{app.web.port}"
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def login(self, password: str = PASSWORD) -> None:
        status, _ = await self.post("/login", {"password": password}, csrf=False)
        assert status == 200, status  # the redirect to the dashboard was followed
        await self.get("/")

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        kwargs.setdefault("allow_redirects", True)
        async with self.http.get(self.base + path, **kwargs) as response:
            text = await response.text()
            found = re.search(r'<meta name="csrf-token" content="([^"]*)"', text)
            if found and found.group(1):
                self.csrf = found.group(1)
            return response.status, text

    async def post(
        self, path: str, data: Any = None, *, csrf: bool = True, json: Any = None, **kwargs: Any
    ) -> tuple[int, str]:
        """A change as the console's own pages send it: same Origin, the CSRF token in a header."""
        headers = {"Origin": self.base, **kwargs.pop("headers", {})}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        async with self.http.post(self.base + path, data=data, json=json, headers=headers, **kwargs) as response:
            return response.status, await response.text()


@pytest.fixture
async def console(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    """`await console(extra_config)`: a started bot with `[web] password` and a logged-in client."""
    started: list[ConsoleClient] = []

    async def make(extra: dict[str, Any] | None = None, login: bool = True) -> ConsoleClient:
        extra = dict(extra or {})
        extra.setdefault("web", {}).setdefault("password", PASSWORD)
        app = await start_bot(write_config(extra))
        client = ConsoleClient(app)
        started.append(client)
        if login:
            await client.login()
        return client

    yield make
    for client in started:
        await client.close()
        await client.app.stop()
