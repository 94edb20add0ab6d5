"""The console's presets page through real sockets: list, view, create, edit, delete, and the chat using the result."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.conftest import BOT_QQ, VERIFY_KEY, mirai_url
from tests.console_client import PASSWORD, ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai, friend_message, sent_text
from tests.fakes.openai_server import FakeOpenAI

__all__ = ["console"]  # the fixture, used by name

SECRETS = (PASSWORD, VERIFY_KEY, "sk-test-1")
CAT = "system: 你是一只猫。\n第二行设定\n\nuser: 你是谁？\n\nassistant: 喵。\n\nuser_send: {nickname}说：{prompt}"


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def textarea_of(page: str) -> str:
    found = re.search(r'<textarea name="text"[^>]*>\n?(.*?)</textarea>', page, re.DOTALL)
    assert found, page
    return html.unescape(found.group(1))


class Chat:
    """A fake mirai-api-http connected to the console's bot: send a private message, read the reply."""

    def __init__(self, mirai: FakeMirai) -> None:
        self.mirai = mirai
        self.ids = 100

    async def say(self, text: str) -> str:
        seen = len(self.mirai.commands)
        self.ids += 1
        await self.mirai.push(friend_message(20001, text, self.ids))
        commands = await self.mirai.wait_commands(seen + 1)
        return sent_text(commands[seen])


async def chat_with(client: ConsoleClient) -> Chat:
    mirai = FakeMirai(mirai_url(client.app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    return Chat(mirai)


def folder_of(client: ConsoleClient) -> Path:
    return Path(client.app.presets.settings.scan_dir)


async def test_the_list_shows_names_files_aliases_first_lines_tokens_and_the_default(
    console: Callable[..., Any],
) -> None:
    client: ConsoleClient = await console({"presets": {"keywords": {"猫": "catgirl"}}}, login=False)
    (folder_of(client) / "catgirl.txt").write_text(CAT, encoding="utf-8")
    client.app.presets.reload()
    await client.login()
    status, page = await client.get("/presets")
    assert status == 200
    assert '<a href="/presets" class="current" aria-current="page">预设</a>' in page  # in the navigation
    row = re.search(r'<tr data-preset="catgirl">.*?</tr>', page, re.DOTALL)
    assert row, page
    tokens = client.app.presets.get("catgirl").tokens
    assert "catgirl.txt" in row.group(0) and "<td>猫</td>" in row.group(0)
    assert "你是一只猫。" in row.group(0) and "第二行" not in row.group(0) and f"<td>{tokens}</td>" in row.group(0)
    default_row = re.search(r'<tr data-preset="default">.*?</tr>', page, re.DOTALL)
    assert default_row and "默认 default" in default_row.group(0) and "删除" not in default_row.group(0)
    no_secret_in(page)
    status, view = await client.get("/presets/view?name=" + quote("猫"))  # an alias opens its preset
    assert status == 200 and "<h1>预设 catgirl</h1>" in view and "{nickname}说：{prompt}" in view
    assert "<code>加载预设 catgirl</code>" in view
    status, page = await client.post("/presets/new", {"name": "with-dash", "text": "system: 连字符"})
    assert status == 200 and "无法用聊天命令加载" in page  # `加载预设 (\w+)` takes no "-"
    no_secret_in(view)


async def test_create_load_in_chat_edit_and_delete(console: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    client: ConsoleClient = await console()
    chat = await chat_with(client)
    try:
        status, form = await client.get("/presets/new")
        assert status == 200 and 'name="text"' in form and "user_send:" in textarea_of(form)
        status, page = await client.post("/presets/new", {"name": "猫娘", "text": CAT.replace("\n", "\r\n")})
        assert status == 200 and "<h1>预设 猫娘</h1>" in page and "预设已创建" in page  # followed the redirect
        assert (folder_of(client) / "猫娘.txt").read_text(encoding="utf-8") == CAT + "\n"
        assert client.app.presets.get("猫娘") is not None

        assert await chat.say("加载预设 猫娘") == "预设加载成功！"
        assert await chat.say("你好") == "echo: friend说：你好"
        messages = fake_llm.requests[-1]["body"]["messages"]
        assert messages[0] == {"role": "system", "content": "你是一只猫。\n第二行设定"}

        status, form = await client.get("/presets/edit?name=" + quote("猫娘"))
        assert status == 200 and textarea_of(form) == CAT + "\n"
        status, page = await client.post("/presets/edit", {"name": "猫娘", "text": "system: 你是一只老虎。"})
        assert status == 200 and "预设已保存" in page and "你是一只老虎。" in page
        assert await chat.say("还在吗") == "echo: 还在吗"  # no user_send template any more
        assert fake_llm.requests[-1]["body"]["messages"][0] == {"role": "system", "content": "你是一只老虎。"}

        status, confirm = await client.get("/presets/delete?name=" + quote("猫娘"))
        assert status == 200 and 'name="confirm" value="猫娘"' in confirm
        status, refused = await client.post("/presets/delete", {"name": "猫娘"})
        assert status == 400 and "确认删除" in refused and client.app.presets.get("猫娘") is not None
        status, page = await client.post("/presets/delete", {"name": "猫娘", "confirm": "猫娘"})
        assert status == 200 and "预设已删除" in page and 'data-preset="猫娘"' not in page
        assert not (folder_of(client) / "猫娘.txt").exists() and client.app.presets.get("猫娘") is None
        await chat.say("删了以后")
        assert fake_llm.requests[-1]["body"]["messages"][0] == {"role": "system", "content": "你是测试机器人。"}
        assert (await chat.say("加载预设 猫娘")).startswith("没有找到预设 猫娘")
    finally:
        await chat.mirai.close()


async def test_bad_names_are_refused_with_the_reason_and_the_text_kept(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    before = sorted(p.name for p in folder_of(client).iterdir())
    text = "system: 保留我写的 <b>内容</b>"
    for name, reason in (
        ("", "请填写预设名称"),
        ("default", "已经有叫 default 的预设了"),
        ("a.b", "只能用字母、数字、汉字"),
        ("a b", "只能用字母、数字、汉字"),
        ("x" * 65, "太长"),
    ):
        status, page = await client.post("/presets/new", {"name": name, "text": text})
        assert status == 400 and reason in page, name
        assert textarea_of(page) == text and "<b>内容</b>" not in page  # kept, and escaped
    assert sorted(p.name for p in folder_of(client).iterdir()) == before


async def test_path_traversal_is_refused(console: Callable[..., Any], tmp_path: Path) -> None:
    client: ConsoleClient = await console()
    outside = tmp_path / "outside.txt"
    outside.write_text("system: 外面", encoding="utf-8")
    for name in ("../outside", "..\\outside", "../../etc/passwd", "..", "sub/x"):
        status, page = await client.post("/presets/new", {"name": name, "text": "system: 越界"})
        assert status == 400 and "不能包含路径" in page, name
    assert outside.read_text(encoding="utf-8") == "system: 外面" and not (tmp_path / "x.txt").exists()
    for path in ("/presets/view", "/presets/edit", "/presets/delete"):
        status, page = await client.get(f"{path}?name=../outside")
        assert status == 404 and "没有找到预设" in page
    status, _ = await client.post("/presets/edit", {"name": "../outside", "text": "system: 越界"})
    assert status == 404
    # A link in the folder that leads out of it: shown, never written or deleted.
    (folder_of(client) / "link.txt").symlink_to(outside)
    client.app.presets.reload()
    status, page = await client.get("/presets/view?name=link")
    assert status == 200 and "只读" in page and "/presets/edit?name=link" not in page
    status, page = await client.get("/presets/edit?name=link")
    assert status == 400 and "只能查看" in page
    status, page = await client.post("/presets/edit", {"name": "link", "text": "system: 改写外面"})
    assert status == 400 and "只能查看" in page
    status, page = await client.post("/presets/delete", {"name": "link", "confirm": "link"})
    assert status == 400 and "只能查看" in page
    assert outside.read_text(encoding="utf-8") == "system: 外面" and (folder_of(client) / "link.txt").is_symlink()


async def test_bad_contents_are_refused_with_line_numbers(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    bad = "没有角色的开头\n\nbot: 你好"
    status, page = await client.post("/presets/new", {"name": "bad", "text": bad})
    assert status == 400 and "第 1 行：第一段没有角色" in page and "第 3 行：未知的角色 bot:" in page
    assert 'data-line="3"' in page and textarea_of(page) == bad
    status, page = await client.post("/presets/new", {"name": "a.b", "text": bad})  # both problems at once
    assert status == 400 and 'id="name-error"' in page and "第 3 行" in page and 'id="error"' not in page
    assert not (folder_of(client) / "bad.txt").exists() and client.app.presets.get("bad") is None
    for text, reason in (("", "预设是空的"), ("system: " + "长" * 30000, "预设太大")):
        status, page = await client.post("/presets/new", {"name": "bad", "text": text})
        assert status == 400 and reason in page
    status, page = await client.post("/presets/edit", {"name": "default", "text": "assistant:"})
    assert status == 400 and "第 1 行：assistant: 后面没有内容" in page
    assert textarea_of(page) == "assistant:"
    assert (folder_of(client) / "default.txt").read_text(encoding="utf-8") == "system: 你是测试机器人。"


async def test_the_check_button_reports_problems_or_the_token_estimate(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    status, part = await client.post(
        "/presets/check", {"text": "system: 好\n\nbot: 坏"}, headers={"HX-Request": "true"}
    )
    assert status == 200 and "第 3 行" in part and "<html" not in part
    status, part = await client.post("/presets/check", {"text": "system: 好"})
    assert status == 200 and 'id="check-ok"' in part and "tokens" in part


async def test_the_default_preset_cannot_be_deleted(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    status, page = await client.get("/presets/delete?name=default")
    assert status == 400 and "默认预设" in page
    status, page = await client.post("/presets/delete", {"name": "default", "confirm": "default"})
    assert status == 400 and "默认预设" in page
    assert (folder_of(client) / "default.txt").exists() and client.app.presets.get("default") is not None


async def test_bad_query_and_form_values_get_4xx(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    for path in ("/presets/view", "/presets/view?name=", "/presets/edit?name[]=x", "/presets/delete?name=%00"):
        status, page = await client.get(path)
        assert 400 <= status < 500 and 'id="reason"' in page, path
    status, _ = await client.get("/presets/view?name=%E0%A4%A")
    assert 400 <= status < 500
    status, _ = await client.post("/presets/edit", {"text": "system: x"})
    assert status == 400
    status, _ = await client.post(
        "/presets/new", data=b"\xff\xfe=\xff", headers={"Content-Type": "multipart/form-data"}
    )
    assert 400 <= status < 500
    status, _ = await client.post("/presets/new", {"name": "big", "text": "x" * (2 * 1024 * 1024)})
    assert status == 413 and not (folder_of(client) / "big.txt").exists()
    status, _ = await client.get("/presets?done=<script>")
    assert status == 200


async def test_every_route_needs_a_login_and_changes_need_the_csrf_token(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    for path in ("/presets", "/presets/new", "/presets/view?name=default", "/presets/edit?name=default"):
        async with client.http.get(client.base + path, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"].startswith("/login"), path
    async with client.http.get(client.base + "/presets/delete?name=default", allow_redirects=False) as response:
        assert response.status == 303
    await client.login()
    for path in ("/presets/new", "/presets/edit", "/presets/delete", "/presets/check"):
        status, _ = await client.post(path, {"name": "x", "text": "system: x", "confirm": "default"}, csrf=False)
        assert status == 403, path
    assert not (folder_of(client) / "x.txt").exists() and client.app.presets.get("default") is not None
