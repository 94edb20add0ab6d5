"""The console in a real headless Chromium: log in, watch a link on the dashboard, chat with a streamed answer."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from playwright.async_api import Browser, expect

import web.console.pages.dashboard as dashboard
from tests.browser import browser, logged_in_page
from tests.conftest import BOT_QQ, VERIFY_KEY, mirai_url
from tests.console_client import ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai
from tests.fakes.openai_server import FakeOpenAI, speech_seconds

__all__ = ["browser", "console"]


async def test_login_and_a_link_going_down_and_up_on_the_dashboard(
    console: Callable[..., Any], browser: Browser, monkeypatch: Any
) -> None:
    monkeypatch.setattr(dashboard, "REFRESH_SECONDS", 1)
    client: ConsoleClient = await console(login=False)
    page = await logged_in_page(browser, client)
    state = page.locator('tr[data-platform="mirai"] td').nth(2)
    await expect(state).to_have_text("listening")  # mirai-api-http has not dialled in yet
    mirai = FakeMirai(mirai_url(client.app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    await expect(state).to_have_text("up")
    await mirai.close()
    await expect(state).to_have_text("listening")
    await mirai.connect()
    await expect(state).to_have_text("up")
    await mirai.close()
    # a wrong password in the same browser is refused with the reason
    await page.click("text=退出登录")
    await page.fill("#password", "not-the-password")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_contain_text("密码错误")


async def test_chat_page_with_a_streamed_answer(
    console: Callable[..., Any], browser: Browser, fake_llm: FakeOpenAI
) -> None:
    client: ConsoleClient = await console({"openai": {"gpt_params": {"stream": True}}}, login=False)
    fake_llm.reply_fn = lambda body: "流式回答的第一段。\n\n流式回答的第二段。"
    fake_llm.chunk_chars, fake_llm.chunk_delay = 2, 0.1
    page = await logged_in_page(browser, client)
    await page.click("nav >> text=聊天")
    await page.fill("#chat-text", "你好，浏览器")
    await page.click("#chat-form button[type=submit]")
    await expect(page.locator(".bubble.mine").last).to_have_text("你好，浏览器")
    await expect(page.locator(".bubble.draft")).to_be_visible()  # the answer is being written, live
    bot_bubbles = page.locator(".bubble.bot:not(.draft):visible")
    await expect(bot_bubbles.last).to_have_text("流式回答的第一段。\n\n流式回答的第二段。")
    await expect(page.locator(".bubble.draft")).to_have_count(0)
    # a command through the same pipeline
    await page.fill("#chat-text", "ping")
    await page.press("#chat-text", "Control+Enter")
    await expect(bot_bubbles.last).to_contain_text("当前账号：")
    # reloading shows the stored history
    await page.reload()
    await expect(page.locator(".bubble.mine").first).to_have_text("你好，浏览器")


async def test_edit_a_preset_and_use_it(console: Callable[..., Any], browser: Browser, fake_llm: FakeOpenAI) -> None:
    client: ConsoleClient = await console(login=False)
    page = await logged_in_page(browser, client)
    await page.click("nav >> text=预设")
    await page.click("text=新建预设 New preset")
    await page.fill('input[name="name"]', "海盗")
    await page.fill("#preset-text", "system: 你是一个海盗。\n\nuser_send: {nickname}问：{prompt}")
    await page.click("button[type=submit].primary")
    await expect(page.locator("body")).to_contain_text("海盗")
    # edit it: the check button reports a mistake before saving
    await page.goto(client.base + "/presets/edit?name=%E6%B5%B7%E7%9B%97")
    await page.fill("#preset-text", "system: 你是一个说话很客气的海盗。\n\nbot: 写错的角色")
    await page.click("text=检查 Check")
    await expect(page.locator("#problems")).to_contain_text("未知的角色 bot:")
    await page.fill("#preset-text", "system: 你是一个说话很客气的海盗。\n\nuser_send: {nickname}问：{prompt}")
    await page.click("button[type=submit].primary")
    # and use it from the chat page
    await page.goto(client.base + "/chat")
    await page.fill("#chat-text", "加载预设 海盗")
    await page.click("#chat-form button[type=submit]")
    await expect(page.locator(".bubble.bot:visible").last).to_have_text("预设加载成功！")
    await page.fill("#chat-text", "你是谁")
    await page.click("#chat-form button[type=submit]")
    await expect(page.locator(".bubble.bot:visible").last).to_contain_text("echo:")
    messages = fake_llm.requests[-1]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "你是一个说话很客气的海盗。"}
    assert messages[-1]["content"] == "控制台问：你是谁"


async def test_edit_a_config_value_and_see_it_saved_and_applied(console: Callable[..., Any], browser: Browser) -> None:
    client: ConsoleClient = await console(login=False)
    path = client.app.settings.path
    path.write_text("# 我的配置：这行注释必须保留\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    page = await logged_in_page(browser, client)
    await page.click("nav >> text=配置")
    await page.click('a[href="/config/response"]')
    field = page.locator('[id="f-response.timeout_format"]')
    await field.fill("请稍等，我在想～")
    await page.locator("#config-form button[type=submit]").first.click()
    await expect(page.locator("#config-notice")).to_contain_text("已保存")
    assert client.app.settings.response.timeout_format == "请稍等，我在想～"  # applied by the reload
    after = path.read_text(encoding="utf-8")
    changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("+ ", "- ")]
    assert changed == ['+ timeout_format = "请稍等，我在想～"']  # the only line that differs
    assert after.startswith("# 我的配置：这行注释必须保留\n")
    # a bad value is shown beside its field with the loader's message, and nothing is written
    await page.locator('[id="f-response.timeout"]').fill("-1")
    await page.locator("#config-form button[type=submit]").first.click()
    await expect(page.locator("body")).to_contain_text("response.timeout")
    assert path.read_text(encoding="utf-8") == after


async def test_a_voice_answer_plays_in_the_chat_page(
    console: Callable[..., Any], browser: Browser, fake_llm: FakeOpenAI
) -> None:
    voice = {"voice": {"tts_engine": "openai"}, "response": {"voice_mode": "voice"}}
    client: ConsoleClient = await console(voice, login=False)
    fake_llm.reply_fn = lambda body: "这是一段会被读出来的回答。"
    page = await logged_in_page(browser, client)
    await page.click("nav >> text=聊天")
    await page.fill("#chat-text", "说句话")
    await page.click("#chat-form button[type=submit]")
    audio = page.locator(".bubble.bot:visible audio")
    await expect(audio).to_have_count(1)
    # the browser decodes it (the page's CSP lets data: media play): its length is the fake's speech length
    duration = await audio.evaluate(
        """el => new Promise((resolve, reject) => {
            if (el.readyState >= 1) { resolve(el.duration); return; }
            el.addEventListener("loadedmetadata", () => resolve(el.duration));
            el.addEventListener("error", () => reject(new Error("the audio did not load")));
            setTimeout(() => reject(new Error("the audio did not load in 10 s")), 10000);
        })"""
    )
    [request] = fake_llm.speech_requests
    assert abs(duration - speech_seconds(request["body"]["input"])) < 0.2
