"""Make the README's console screenshots: a bot on a fake model and a fake Mirai, driven in headless Chromium.

Run from the project root with the test requirements installed: `python docs/screenshots.py`
(needs Debian's `chromium`; writes docs/images/console-*.png).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import tomlkit
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot import App  # noqa: E402
from core.config import load_config  # noqa: E402
from tests.browser import FLAGS, chromium_path  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fakes.mirai_peer import FakeMirai, friend_message  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

PASSWORD = "screenshot-password"
IMAGES = ROOT / "docs" / "images"


async def main() -> None:
    llm = FakeOpenAI(latency=0.3)
    llm.reply_fn = lambda body: "你好！我是接入 QQ 的 ChatGPT 机器人。\n\n可以问我任何问题，也可以发送“帮助”查看命令。"
    await llm.start()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "presets").mkdir()
        (tmp / "presets" / "default.txt").write_text("system: 你是一个乐于助人的助手。", encoding="utf-8")
        mirai_port, web_port = free_port(), free_port()
        config = {
            "mirai": {"qq": 10001, "api_key": "screenshot-key-123", "reverse_ws_port": mirai_port},
            "openai": {
                "accounts": [
                    {
                        "name": "deepseek",
                        "api_key": "sk-screenshot-1",
                        "api_endpoint": llm.base_url,
                        "model": "deepseek-chat",
                    },
                    {"name": "qwen", "api_key": "sk-screenshot-2", "api_endpoint": llm.base_url, "model": "qwen-plus"},
                ]
            },
            "database": {"url": f"sqlite+aiosqlite:///{tmp / 'bot.sqlite3'}"},
            "presets": {"scan_dir": str(tmp / "presets")},
            "web": {"port": web_port, "password": PASSWORD},
        }
        path = tmp / "config.toml"
        path.write_text(tomlkit.dumps(config), encoding="utf-8")
        app = App(load_config(path))
        await app.start()
        mirai = FakeMirai(f"ws://127.0.0.1:{mirai_port}/", "screenshot-key-123", 10001)
        await mirai.connect()
        for number, text in enumerate(["你好", "介绍一下你自己", "今天天气怎么样", "讲个笑话"]):
            await mirai.push(friend_message(20001 + number % 2, text, 100 + number))
            await mirai.wait_commands(number + 1)
        base = f"http://127.0.0.1:{web_port}"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            await page.goto(base + "/login")
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(base + "/")
            await page.wait_for_timeout(500)
            await page.screenshot(path=str(IMAGES / "console-dashboard.png"), full_page=True)
            await page.goto(base + "/chat")
            await page.fill("#chat-text", "你好，请介绍一下你自己")
            await page.click("#chat-form button[type=submit]")
            await page.locator(".bubble.bot:not(.draft):visible").last.wait_for()
            await page.screenshot(path=str(IMAGES / "console-chat.png"))
            await browser.close()
        await mirai.close()
        await app.stop()
    await llm.stop()


if __name__ == "__main__":
    asyncio.run(main())
