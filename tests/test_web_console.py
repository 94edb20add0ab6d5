"""The web console's server and security, through real sockets: login, sessions, CSRF, throttling, Host check."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.config import load_config
from core.errors import ConfigError
from tests.conftest import VERIFY_KEY, free_port, start_bot
from tests.console_client import PASSWORD, ConsoleClient, console
from web.console.password import hash_password, password_matches

__all__ = ["console"]  # the fixture, used by name

SECRETS = (PASSWORD, VERIFY_KEY, "sk-test-1")
VENDOR = Path(__file__).resolve().parent.parent / "web" / "static" / "vendor"


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


async def test_pages_need_a_login(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    async with client.http.get(client.base + "/", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/login"
    async with client.http.get(client.base + "/dashboard/live", headers={"HX-Request": "true"}) as response:
        assert response.status == 401 and response.headers["HX-Redirect"] == "/login"
    status, text = await client.get("/")
    assert status == 200 and 'name="password"' in text  # followed to the login page
    status, _ = await client.post("/logout", csrf=False)
    assert status == 401


async def test_login_sets_a_strict_httponly_cookie_and_shows_the_dashboard(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    async with client.http.post(
        client.base + "/login", data={"password": PASSWORD}, headers={"Origin": client.base}, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/"
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    status, page = await client.get("/")
    assert status == 200
    assert 'data-platform="mirai"' in page and 'data-account="main"' in page
    no_secret_in(page)
    status, live = await client.get("/dashboard/live")
    assert status == 200 and 'id="links"' in live
    no_secret_in(live)


async def test_wrong_passwords_are_throttled(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    now = [1000.0]
    guard = client.app.web.console.guard
    guard.clock = guard.throttle.clock = lambda: now[0]
    for _ in range(5):  # the fifth failure starts the lock-out
        status, text = await client.post("/login", {"password": "wrong"}, csrf=False)
        assert status == 401 and "密码错误" in text
    status, text = await client.post("/login", {"password": PASSWORD}, csrf=False)
    assert status == 429 and "尝试次数过多" in text  # even the right password waits
    now[0] += 31
    status, _ = await client.post("/login", {"password": "wrong"}, csrf=False)
    assert status == 401
    status, _ = await client.post("/login", {"password": PASSWORD}, csrf=False)
    assert status == 429  # each further failure doubles the wait: 60 s now
    now[0] += 61
    status, _ = await client.post("/login", {"password": PASSWORD}, csrf=False)
    assert status == 200


async def test_changes_need_the_csrf_token_and_the_same_origin(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    status, text = await client.post("/logout", csrf=False)
    assert status == 403 and "CSRF" in text
    client_csrf = client.csrf
    client.csrf = "forged"
    status, _ = await client.post("/logout")
    assert status == 403
    client.csrf = client_csrf
    status, _ = await client.post("/logout", headers={"Origin": "http://evil.example"})
    assert status == 403
    status, text = await client.post("/logout")
    assert status == 200 and 'name="password"' in text  # logged out, back at the login page
    async with client.http.get(client.base + "/", allow_redirects=False) as response:
        assert response.status == 303  # the old cookie no longer works


async def test_a_form_field_carries_the_csrf_token_too(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    status, text = await client.post("/logout", {"csrf_token": client.csrf}, csrf=False)
    assert status == 200 and 'name="password"' in text


async def test_other_host_names_are_refused_on_loopback(console: Callable[..., Any]) -> None:
    # DNS rebinding: a page on attacker.example resolved to 127.0.0.1 sends Host: attacker.example
    client: ConsoleClient = await console()
    async with client.http.get(client.base + "/", headers={"Host": "attacker.example"}) as response:
        assert response.status == 421
    async with client.http.get(client.base + "/", headers={"Host": f"localhost:{client.app.web.port}"}) as response:
        assert response.status == 200


async def test_login_redirects_only_within_the_console(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    for target, expected in (
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/\\evil", "/"),
        ("/a?b=1", "/a?b=1"),
    ):
        async with client.http.post(
            client.base + "/login",
            data={"password": PASSWORD, "next": target},
            headers={"Origin": client.base},
            allow_redirects=False,
        ) as response:
            assert response.headers["Location"] == expected


async def test_without_a_password_the_console_explains_how_to_set_one(write_config: Callable[..., Path]) -> None:
    app = await start_bot(write_config())
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{app.web.port}"
            async with http.get(base + "/") as response:
                text = await response.text()
                assert response.status == 200 and "python -m web.console.password" in text
                assert "data-platform" not in text
            async with http.post(base + "/login", data={"password": ""}, headers={"Origin": base}) as response:
                assert "data-platform" not in await response.text()
            async with http.get(base + "/healthz") as response:
                assert response.status in (200, 503)
    finally:
        await app.stop()


async def test_security_headers(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    async with client.http.get(client.base + "/") as response:
        headers = response.headers
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'self': no inline scripts
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"


async def test_a_hashed_password_works(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console({"web": {"password": hash_password(PASSWORD, iterations=1000)}}, login=False)
    await client.login()
    status, page = await client.get("/")
    assert status == 200 and "data-platform" in page


def test_password_matching() -> None:
    hashed = hash_password("密码", iterations=1000)
    assert password_matches("密码", hashed) and not password_matches("密码x", hashed)
    assert password_matches("plain", "plain") and not password_matches("plai", "plain")
    assert not password_matches("", "") and not password_matches("x", "pbkdf2_sha256$bad")


def test_a_password_is_required_beyond_loopback(write_config: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config({"web": {"host": "0.0.0.0", "port": free_port()}}))
    assert "web.password" in caught.value.one_line()
    load_config(write_config({"web": {"host": "0.0.0.0", "port": free_port(), "console": False}}))
    load_config(write_config({"web": {"host": "0.0.0.0", "port": free_port(), "password": "x" * 12}}))


def test_vendored_files_are_the_released_ones() -> None:
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (VENDOR / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert len(listed) == 3
    for digest, name in listed:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert (VENDOR / "htmx" / "LICENSE").exists() and (VENDOR / "uplot" / "LICENSE").exists()


async def test_a_new_password_from_a_reload_applies_at_once_and_ends_every_session(
    console: Callable[..., Any],
) -> None:
    client: ConsoleClient = await console()
    config = client.app.settings.path
    text = config.read_text(encoding="utf-8").replace(f'password = "{PASSWORD}"', 'password = "a-new-password-1"')
    config.write_text(text, encoding="utf-8")
    assert "已重新加载" in await client.app.reload()
    async with client.http.get(client.base + "/", allow_redirects=False) as response:
        assert response.status == 303  # the old session ended with the old password
    status, _ = await client.post("/login", {"password": PASSWORD}, csrf=False)
    assert status == 401
    await client.login("a-new-password-1")
    status, page = await client.get("/")
    assert status == 200 and "data-platform" in page
