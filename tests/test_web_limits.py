"""The console's limits and blacklist page through real sockets: tables, set/clear limits, block/unblock,
usage in the last hour, and that each change reaches the bot at once (a chat through a fake Mirai)."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from storage.admin import AdminStore
from tests.browser import browser, logged_in_page
from tests.conftest import BOT_QQ, VERIFY_KEY, mirai_url
from tests.console_client import PASSWORD, ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text

__all__ = ["browser", "console"]

USER = 20001
GROUP = 30001
SECRETS = (PASSWORD, VERIFY_KEY, "sk-test-1")
ROUTES = ("/limits/set", "/limits/clear", "/limits/block", "/limits/unblock")


def row(page: str, table: str, scope: str, target: str) -> str:
    """The HTML of one row of a table on the page ("" when it is not there)."""
    body = page.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    found = re.search(rf'<tr data-scope="{scope}" data-target="{re.escape(target)}"[^>]*>(.*?)</tr>', body, re.S)
    return found.group(1) if found else ""


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
async def mirai(console: Callable[..., Any]) -> AsyncIterator[tuple[ConsoleClient, FakeMirai]]:
    client: ConsoleClient = await console()
    peer = FakeMirai(mirai_url(client.app), VERIFY_KEY, BOT_QQ)
    await peer.connect()
    yield client, peer
    await peer.close()


async def say(peer: FakeMirai, text: str) -> str:
    """Send a private message as USER and return the bot's one reply."""
    seen = len(peer.commands)
    await peer.push(friend_message(USER, text, 700 + seen))
    return sent_text((await peer.wait_commands(seen + 1))[seen])


async def test_the_page_shows_limits_usage_and_blacklist(mirai: tuple[ConsoleClient, FakeMirai]) -> None:
    client, peer = mirai
    admin: AdminStore = client.app.admin
    await admin.set_limit("user", str(USER), 5)
    await admin.set_limit("group", "default", 30)
    await admin.set_limit("draw_member", f"{GROUP}:{USER}", 2)
    await admin.block("group", "40004")
    assert await say(peer, "一") == "echo: 一"
    assert await say(peer, "二") == "echo: 二"
    status, page = await client.get("/limits")
    assert status == 200 and "额度与黑名单" in page
    assert "5 条/小时" in row(page, "message-limits", "user", str(USER))
    assert '<td class="used">2' in row(page, "message-limits", "user", str(USER))
    default = row(page, "message-limits", "group", "default")
    assert "30 条/小时" in default and "默认" in default
    assert "2 个/小时" in row(page, "draw-limits", "member", f"{GROUP}:{USER}")
    assert row(page, "message-limits", "member", f"{GROUP}:{USER}") == ""  # drawing only
    assert "<td>2</td>" in row(page, "usage", "user", str(USER))
    assert row(page, "blacklist", "group", "40004")
    assert 'href="/limits"' in page and "/static/limits.js" in page
    no_secret_in(page)


async def test_set_and_clear_a_limit_apply_at_once(mirai: tuple[ConsoleClient, FakeMirai]) -> None:
    client, peer = mirai
    status, page = await client.post(
        "/limits/set", {"kind": "message", "scope": "user", "target": str(USER), "limit": "0"}
    )
    assert status == 200  # redirected to the page, which shows the new row
    assert "0 条/小时" in row(page, "message-limits", "user", str(USER)) and "禁止" in page
    assert await client.app.admin.limit_for("user", str(USER)) == 0
    exceed = client.app.settings.ratelimit.exceed
    assert await say(peer, "你好") == exceed  # limit 0 lets nobody chat
    status, page = await client.post("/limits/clear", {"kind": "message", "scope": "user", "target": str(USER)})
    assert status == 200 and row(page, "message-limits", "user", str(USER)) == ""
    assert await client.app.admin.limit_for("user", str(USER)) is None
    assert await say(peer, "你好") == "echo: 你好"


async def test_a_plain_form_with_the_token_field_works_without_javascript(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    _, page = await client.get("/limits")
    assert 'action="/limits/set"' in page and 'name="csrf_token"' in page
    form = {"csrf_token": client.csrf, "kind": "message", "scope": "group", "target": str(GROUP), "limit": "9"}
    status, page = await client.post("/limits/set", form, csrf=False)
    assert status == 200 and "9 条/小时" in row(page, "message-limits", "group", str(GROUP))


async def test_defaults_members_and_drawing_limits(mirai: tuple[ConsoleClient, FakeMirai]) -> None:
    client, _ = mirai
    admin: AdminStore = client.app.admin
    for form in (
        {"kind": "message", "scope": "group", "target": "default", "limit": "30"},
        {"kind": "message", "scope": "member", "target": f"{GROUP}:{USER}", "limit": "3"},
        {"kind": "draw", "scope": "user", "target": "默认", "limit": "4"},
    ):
        status, _ = await client.post("/limits/set", form)
        assert status == 200
    assert await admin.limit_for("group", "12345") == 30
    assert await admin.limit_for("member", f"{GROUP}:{USER}") == 3
    assert await admin.limit_for("draw_user", "12345") == 4
    assert await admin.limit_for("user", "12345") is None  # the drawing default is its own
    _, page = await client.get("/limits")
    assert "4 个/小时" in row(page, "draw-limits", "user", "default")
    assert "3 条/小时" in row(page, "message-limits", "member", f"{GROUP}:{USER}")


async def test_htmx_changes_answer_with_the_refreshed_tables(mirai: tuple[ConsoleClient, FakeMirai]) -> None:
    client, _ = mirai
    hx = {"HX-Request": "true"}
    form = {"kind": "draw", "scope": "group", "target": str(GROUP), "limit": "7"}
    status, part = await client.post("/limits/set", form, headers=hx)
    assert status == 200 and part.startswith('<div id="limits-body"') and "<html" not in part
    assert "已设置" in part and "7 个/小时" in row(part, "draw-limits", "group", str(GROUP))
    status, part = await client.post("/limits/set", {**form, "limit": "-1"}, headers=hx)
    assert status == 400 and 'id="limits-error"' in part and "额度应为" in part
    assert "7 个/小时" in row(part, "draw-limits", "group", str(GROUP))  # unchanged, still shown


async def test_block_and_unblock_apply_at_once(mirai: tuple[ConsoleClient, FakeMirai]) -> None:
    client, peer = mirai
    admin: AdminStore = client.app.admin
    status, page = await client.post("/limits/block", {"scope": "member", "target": f"{GROUP}:{USER}"})
    assert status == 200 and row(page, "blacklist", "member", f"{GROUP}:{USER}")
    assert admin.is_blocked(str(USER), str(GROUP)) and not admin.is_blocked(str(USER))
    status, page = await client.post("/limits/block", {"scope": "user", "target": str(USER)})
    assert status == 200 and admin.is_blocked(str(USER))
    seen = len(peer.commands)
    await peer.push(friend_message(USER, "有人吗", 801))
    await peer.push(friend_message(USER + 1, "我在", 802))  # not blocked: answered
    replies = [sent_text(c) for c in (await peer.wait_commands(seen + 1))[seen:]]
    assert replies == ["echo: 我在"]  # the blocked user's message was ignored
    status, part = await client.post(
        "/limits/block", {"scope": "user", "target": str(USER)}, headers={"HX-Request": "1"}
    )
    assert status == 200 and "已经在黑名单中" in part
    status, page = await client.post("/limits/unblock", {"scope": "user", "target": str(USER)})
    assert status == 200 and row(page, "blacklist", "user", str(USER)) == ""
    assert row(page, "blacklist", "member", f"{GROUP}:{USER}")
    assert not admin.is_blocked(str(USER))
    assert await say(peer, "回来了") == "echo: 回来了"
    status, part = await client.post(
        "/limits/unblock", {"scope": "user", "target": str(USER)}, headers={"HX-Request": "1"}
    )
    assert status == 200 and "不在黑名单中" in part


@pytest.mark.parametrize(
    ("path", "form", "reason"),
    [
        ("/limits/set", {"kind": "message", "scope": "admin", "target": "1", "limit": "1"}, "范围"),
        ("/limits/set", {"kind": "pictures", "scope": "user", "target": "1", "limit": "1"}, "额度类型"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "", "limit": "1"}, "QQ号"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "12 34", "limit": "1"}, "QQ号"),
        ("/limits/set", {"kind": "message", "scope": "group", "target": "<script>", "limit": "1"}, "群号"),
        ("/limits/set", {"kind": "message", "scope": "member", "target": "123", "limit": "1"}, "群号:QQ号"),
        ("/limits/set", {"kind": "message", "scope": "member", "target": "1:2:3", "limit": "1"}, "群号:QQ号"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "1", "limit": "-1"}, "额度应为"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "1", "limit": "ten"}, "额度应为"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "1", "limit": "1.5"}, "额度应为"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "1", "limit": "１０"}, "额度应为"),
        ("/limits/set", {"kind": "message", "scope": "user", "target": "1", "limit": "9" * 40}, "额度应为"),
        ("/limits/set", {"scope": "user", "target": "1"}, "额度应为"),
        ("/limits/clear", {"kind": "message", "scope": "", "target": "1"}, "范围"),
        ("/limits/block", {"scope": "user", "target": "default"}, "default"),
        ("/limits/block", {"scope": "member", "target": ":5"}, "群号:QQ号"),
        ("/limits/unblock", {"scope": "everyone", "target": "5"}, "范围"),
        ("/limits/block", {}, "范围"),
    ],
)
async def test_bad_input_is_refused_with_a_reason(
    console: Callable[..., Any], path: str, form: dict[str, str], reason: str
) -> None:
    client: ConsoleClient = await console()
    status, text = await client.post(path, form)
    assert status == 400 and reason in text and "\n" not in text.strip()
    assert "<script>" not in text
    assert await client.app.admin.limits() == {} and await client.app.admin.blocked() == frozenset()


async def test_a_json_body_is_refused_not_crashed(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    status, _ = await client.post("/limits/set", json={"scope": "user", "target": "1", "limit": 1})
    assert status == 400


async def test_the_page_escapes_targets_written_by_other_means(console: Callable[..., Any]) -> None:
    # the chat command `.设置 好友 <anything> 额度为 …` stores any non-blank word as the target
    client: ConsoleClient = await console()
    await client.app.admin.set_limit("user", "<b>x</b>", 3)
    status, page = await client.get("/limits")
    assert status == 200 and "<b>x</b>" not in page and html.escape("<b>x</b>") in page


async def test_limit_routes_need_a_login_and_the_csrf_token(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    async with client.http.get(client.base + "/limits", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"].startswith("/login")
    for path in ROUTES:
        status, _ = await client.post(path, {"scope": "user", "target": "1", "limit": "0"}, csrf=False)
        assert status == 401, path
    await client.login()
    for path in ROUTES:
        status, text = await client.post(path, {"scope": "user", "target": "1", "limit": "0"}, csrf=False)
        assert status == 403 and "CSRF" in text, path
    status, _ = await client.post(
        "/limits/block", {"scope": "user", "target": "1"}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403  # a cross-site form, even with the right token
    assert await client.app.admin.limits() == {} and await client.app.admin.blocked() == frozenset()


async def test_usage_of_many_targets_is_shown(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    admin: AdminStore = client.app.admin
    await admin.set_limit("group", "default", 100)
    targets = [str(50000 + i) for i in range(150)]  # more than one counting statement's batch
    for i, target in enumerate(targets):
        await admin.set_limit("member", f"{GROUP}:{target}", 10)
        await admin.record(None, *[("member", f"{GROUP}:{target}")] * (1 + i % 3))
    await admin.record(None, ("group", "777"), ("group", "777"))
    status, page = await client.get("/limits")
    assert status == 200
    for i, target in enumerate(targets):
        assert f'<td class="used">{1 + i % 3}' in row(page, "message-limits", "member", f"{GROUP}:{target}")
    assert "<td>2</td><td>100</td>" in re.sub(r"\s+", "", row(page, "usage", "group", "777"))


async def test_the_forms_work_in_a_browser(console: Callable[..., Any], browser: Browser) -> None:
    client: ConsoleClient = await console(login=False)
    page = await logged_in_page(browser, client)
    errors: list[str] = []  # the page's own script failing
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(client.base + "/limits")
    setter = page.locator("#set-limit")
    await setter.locator("select[name=kind]").select_option("draw")
    await setter.locator("select[name=scope]").select_option("member")
    await setter.locator("input[name=target]").fill(f"{GROUP}:{USER}")
    await setter.locator("input[name=limit]").fill("3")
    await setter.locator("button").click()
    await expect(page.locator("#limits-notice")).to_contain_text("已设置")
    await expect(page.locator(f'#draw-limits tr[data-target="{GROUP}:{USER}"]')).to_contain_text("3 个/小时")
    assert await client.app.admin.limit_for("draw_member", f"{GROUP}:{USER}") == 3
    await setter.locator("select[name=scope]").select_option("member")
    await setter.locator("input[name=target]").fill("12345")  # no group: refused, the reason shown
    await setter.locator("button").click()
    await expect(page.locator("#limits-error")).to_contain_text("群号:QQ号")
    blocker = page.locator("#block")
    await blocker.locator("select[name=scope]").select_option("group")
    await blocker.locator("input[name=target]").fill(str(GROUP))
    await blocker.locator("button").click()
    await expect(page.locator(f'#blacklist tr[data-target="{GROUP}"]')).to_be_visible()
    assert client.app.admin.is_blocked("1", str(GROUP))
    await page.locator(f'#blacklist tr[data-target="{GROUP}"] button').click()
    await expect(page.locator(f'#blacklist tr[data-target="{GROUP}"]')).to_have_count(0)
    await page.locator(f'#draw-limits tr[data-target="{GROUP}:{USER}"] button').click()
    await expect(page.locator("#limits-notice")).to_contain_text("已清除")
    assert await client.app.admin.limits() == {} and not client.app.admin.is_blocked("1", str(GROUP))
    assert errors == []
