"""Tools end to end: fake mirai-api-http ⇄ bot ⇄ fake OpenAI server scripted to call tools, on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot import App
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, metric_samples, mirai_url, start_bot
from tests.console_client import ConsoleClient, console
from tests.fakes.mirai_peer import FakeMirai, friend_message, group_message, sent_text
from tests.fakes.openai_server import FakeCall, FakeOpenAI, FakeToolCalls, last_tool_results, replies_in_order

__all__ = ["console"]

MANAGER = 20099
USER = 20001
GROUP = 30001


class Chat:
    """The bot and one fake mirai-api-http; `say` returns the bot's replies to one message."""

    def __init__(self, app: App, mirai: FakeMirai) -> None:
        self.app, self.mirai, self.ids = app, mirai, 500

    async def say(self, text: str, user: int = USER, group: int = 0, replies: int = 1) -> list[str]:
        self.ids += 1
        seen = len(self.mirai.commands)
        frame = group_message(group, user, text, self.ids, at=BOT_QQ) if group else friend_message(user, text, self.ids)
        await self.mirai.push(frame)
        await eventually(lambda: len(self.mirai.commands) >= seen + replies, timeout=15)
        return [sent_text(command) for command in self.mirai.commands[seen:]]


@pytest.fixture
async def chat(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Chat] = []

    async def start(tools: dict[str, Any] | None = None, stream: bool = False) -> Chat:
        extra = {
            "mirai": {"manager_qq": MANAGER},
            "tools": {"enable": True, **(tools or {})},
            "openai": {"gpt_params": {"stream": stream}},
        }
        app = await start_bot(write_config(extra))
        mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
        await mirai.connect()
        started.append(Chat(app, mirai))
        return started[-1]

    yield start
    for found in started:
        await found.mirai.close()
        await found.app.stop()


def offered(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_model_calls_a_tool_and_answers_with_its_result(
    chat: Callable[..., Any], fake_llm: FakeOpenAI, stream: bool
) -> None:
    fake_llm.reply_fn = replies_in_order(
        FakeToolCalls([FakeCall("current_time", {}, "t1")], text="我看一下时间。"), "现在是下午。"
    )
    bot: Chat = await chat(stream=stream)
    replies = await bot.say("几点了？")
    assert "现在是下午。" in "".join(replies)
    assert metric_samples(bot.app, "tool_calls") == {(("outcome", "ok"), ("tool", "current_time")): 1.0}
    first, second = (request["body"] for request in fake_llm.requests)
    assert "current_time" in offered(first) and "web_fetch" in offered(first)
    [result] = last_tool_results(second)
    assert result["tool_call_id"] == "t1" and "Asia/Shanghai" in result["content"]
    # the call and its result are in the history, between the question and the answer
    turns = await bot.app.store.window(f"qq:private:{USER}", 100_000)
    assert [turn.role for turn in turns] == ["user", "tool", "assistant"]
    assert json.loads(turns[1].content)["name"] == "current_time"
    # and the next question sends them back to the model as the call and its result
    await bot.say("再说一遍")
    roles = [message["role"] for message in fake_llm.requests[-1]["body"]["messages"]]
    assert roles[-4:] == ["assistant", "tool", "assistant", "user"]


async def test_parallel_calls_and_a_refused_private_address(chat: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    fake_llm.reply_fn = replies_in_order(
        FakeToolCalls(
            [FakeCall("current_time", {}, "a"), FakeCall("web_fetch", {"url": "http://127.0.0.1:9/secret"}, "b")]
        ),
        "好的。",
    )
    bot: Chat = await chat()
    assert await bot.say("现在几点，顺便看看这个链接") == ["好的。"]
    results = {item["tool_call_id"]: item["content"] for item in last_tool_results(fake_llm.requests[1]["body"])}
    assert "Asia/Shanghai" in results["a"]
    assert results["b"].startswith("工具出错") and "secret" not in results["b"]


async def test_a_member_cannot_use_an_admin_only_tool_even_when_the_model_asks(
    chat: Callable[..., Any], fake_llm: FakeOpenAI
) -> None:
    bot: Chat = await chat({"allowed": {"current_time": "admins"}})
    fake_llm.reply_fn = replies_in_order(FakeToolCalls([FakeCall("current_time", {}, "x")]), "我不能查时间。")
    assert await bot.say("几点了", group=GROUP) == ["我不能查时间。"]
    first, second = (request["body"] for request in fake_llm.requests)
    assert "current_time" not in offered(first) and "web_fetch" in offered(first)
    [result] = last_tool_results(second)
    assert result["content"] == "没有名为 current_time 的工具可用。"
    assert metric_samples(bot.app, "tool_calls") == {(("outcome", "refused"), ("tool", "(unknown)")): 1.0}
    # the manager may; 工具列表 shows each sender their own tools
    member_list = (await bot.say("工具列表", group=GROUP))[0]
    manager_list = (await bot.say("工具列表", user=MANAGER, group=GROUP))[0]
    assert "web_fetch" in member_list and "current_time" not in member_list
    assert "current_time" in manager_list


async def test_a_manager_switches_tools_off_in_a_group(chat: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    bot: Chat = await chat()
    assert await bot.say(f".设置 群组 {GROUP} 工具 关闭", user=MANAGER) == [f"已关闭群 {GROUP} 的工具。"]
    await bot.say("你好", group=GROUP)
    assert "tools" not in fake_llm.requests[-1]["body"]
    await bot.say("你好", user=USER)  # a private chat keeps its tools
    assert offered(fake_llm.requests[-1]["body"])
    assert await bot.say(f".设置 群组 {GROUP} 工具 开启", user=MANAGER) == [
        f"已开启群 {GROUP} 的工具（按工具额度和权限）。"
    ]
    await bot.say("你好", group=GROUP)
    assert offered(fake_llm.requests[-1]["body"])


async def test_tool_calls_have_their_own_hourly_limit(chat: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    bot: Chat = await chat()
    assert "工具额度为 1 次/小时" in (await bot.say(f".设置 好友 {USER} 工具额度为 1 次/小时", user=MANAGER))[0]
    fake_llm.reply_fn = replies_in_order(
        FakeToolCalls([FakeCall("current_time", {}, "1")]),
        FakeToolCalls([FakeCall("current_time", {}, "2")]),
        "答完了。",
    )
    assert await bot.say("查两次时间") == ["答完了。\n\n" + bot.app.settings.ratelimit.tool_exceed]
    second, third = (request["body"] for request in fake_llm.requests[1:3])
    assert "Asia/Shanghai" in last_tool_results(second)[0]["content"]
    assert last_tool_results(third)[0]["content"] == bot.app.settings.ratelimit.tool_exceed
    assert "tools" not in third  # nothing more is offered once the limit is used up
    usage = (await bot.say(f".查看 好友 {USER} 的工具使用情况", user=MANAGER))[0]
    assert "已调用工具 1 次" in usage


async def test_accounts_without_function_calling_never_get_tools(
    chat: Callable[..., Any], fake_llm: FakeOpenAI, write_config: Callable[..., Path]
) -> None:
    bot: Chat = await chat()
    await bot.app.stop()
    await bot.mirai.close()
    account = {"name": "main", "api_key": "sk-test-1", "api_endpoint": fake_llm.base_url, "model": "m1", "tools": False}
    app = await start_bot(write_config({"tools": {"enable": True}, "openai": {"accounts": [account]}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    try:
        await Chat(app, mirai).say("几点了")
        assert "tools" not in fake_llm.requests[-1]["body"]
    finally:
        await mirai.close()
        await app.stop()


async def test_an_mcp_servers_tool_is_called_through_the_bot(chat: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    server = {"name": "clock", "command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
    bot: Chat = await chat({"time": False, "fetch": False})
    await bot.app.stop()
    await bot.mirai.close()
    config = bot.app.settings.path.read_text(encoding="utf-8")
    bot.app.settings.path.write_text(config + _mcp_table(server), encoding="utf-8")
    app = await start_bot(bot.app.settings.path)
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    try:
        await eventually(lambda: any(t.spec.name == "clock__get_current_time" for t in app.manager.toolbox.all()), 30)
        fake_llm.reply_fn = replies_in_order(
            FakeToolCalls([FakeCall("clock__get_current_time", {"timezone": "Asia/Shanghai"}, "m1")]), "查到了。"
        )
        assert await Chat(app, mirai).say("上海几点") == ["查到了。"]
        assert "clock__get_current_time" in offered(fake_llm.requests[-2]["body"])
        [result] = last_tool_results(fake_llm.requests[-1]["body"])
        assert json.loads(result["content"])["timezone"] == "Asia/Shanghai"
        status = app.manager.status()
        assert "MCP：clock 正常（2 个工具）" in status
    finally:
        await mirai.close()
        await app.stop()


def _mcp_table(server: dict[str, Any]) -> str:
    args = ", ".join(json.dumps(arg) for arg in server["args"])
    return f'\n[[mcp.servers]]\nname = "{server["name"]}"\ncommand = {json.dumps(server["command"])}\nargs = [{args}]\n'


async def test_the_dashboard_shows_tools_and_mcp_servers(console: Callable[..., Any]) -> None:
    good = {"name": "clock", "command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
    broken = {"name": "gone", "command": "no-such-mcp-command-here"}
    client: ConsoleClient = await console({"tools": {"enable": True}, "mcp": {"servers": [good, broken]}})
    await eventually(lambda: len(client.app.manager.toolbox.all()) == 4, timeout=30)  # time, fetch + clock's two
    _, live = await client.get("/dashboard/live")
    clock = live.split('data-mcp="clock"', 1)[1].split("</tr>", 1)[0]
    gone = live.split('data-mcp="gone"', 1)[1].split("</tr>", 1)[0]
    assert "4 个可用" in live and "正常 up" in clock and "<td>2</td>" in clock
    assert "未连接 down" in gone or "启动中 starting" in gone
