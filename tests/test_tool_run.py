"""The conversation side of tools: who may use which tool, and one answer's calls (timeouts, errors, limits)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conversation.tools import ToolBox, ToolRun, history_turns, may_use, tools_switched_off
from core.config import Settings, loads_config
from core.event import ChatType, MessageEvent
from llm.base import ToolCall
from storage.admin import TOOL, AdminStore, member_target
from storage.base import StoredTool, StoredTurn
from storage.store import SqlHistoryStore
from tools.base import ToolError, ToolSpec

ACCOUNT = '[[openai.accounts]]\napi_key = "sk-1"\n'


def settings(extra: str = "") -> Settings:
    return loads_config(ACCOUNT + "[tools]\nenable = true\ntimeout = 0.5\nmax_steps = 3\n" + extra)


def event(group: str = "", user: str = "42") -> MessageEvent:
    chat = ChatType.GROUP if group else ChatType.PRIVATE
    return MessageEvent("onebot", "qq", "1", chat, user, (), message_id="m1", group_id=group)


class Echo:
    """A real tool: says back its arguments, slowly when asked, or fails."""

    def __init__(self, name: str = "echo", progress: str = "正在回声…") -> None:
        self.spec = ToolSpec(name, "echo the arguments", progress=progress)
        self.calls: list[dict[str, Any]] = []

    async def call(self, arguments: dict[str, Any]) -> str:
        self.calls.append(arguments)
        if arguments.get("fail"):
            raise ToolError("坏了")
        if arguments.get("crash"):
            raise RuntimeError("a bug")
        await asyncio.sleep(float(arguments.get("wait", 0)))
        return json.dumps(arguments, ensure_ascii=False)


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminStore]:
    history = await SqlHistoryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}")
    store = AdminStore(history.engine)
    await store.load()
    yield store
    await store.close()
    await history.close()


def call(name: str, arguments: str | dict[str, Any], ident: str = "c1") -> ToolCall:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(ident, name, raw)


def test_access_everyone_admins_and_groups() -> None:
    assert may_use("everyone", event(), admin=False)
    assert not may_use("admins", event("9"), admin=False) and may_use("admins", event("9"), admin=True)
    assert may_use(["9"], event("9"), admin=False)
    assert not may_use(["9"], event("8"), admin=True) and not may_use(["9"], event(), admin=True)


def test_the_box_offers_each_sender_only_their_tools() -> None:
    box = ToolBox(settings('allowed = { current_time = "admins", web_fetch = ["9"] }\n'))
    names = lambda found: sorted(tool.spec.name for tool in found)  # noqa: E731
    assert names(box.allowed(event("9"), admin=False)) == ["web_fetch"]
    assert names(box.allowed(event("8"), admin=True)) == ["current_time"]
    assert ToolBox(loads_config(ACCOUNT)).all() == []  # [tools] enable = false


async def test_calls_run_at_once_in_order_and_are_kept_for_the_history(admin: AdminStore) -> None:
    echo = Echo()
    notices: list[str] = []

    async def notify(text: str) -> None:
        notices.append(text)

    run = ToolRun([echo], event(), admin, settings(), notify)
    assert [spec["function"]["name"] for spec in run.specs] == ["echo"]
    turns = await run.run([call("echo", {"a": 1}, "x"), call("echo", {"b": 2}, "y")])
    assert [(t.role, t.tool_call_id, t.content) for t in turns] == [
        ("tool", "x", '{"a": 1}'),
        ("tool", "y", '{"b": 2}'),
    ]
    assert [stored.call_id for stored in run.stored] == ["x", "y"] and notices == []


async def test_unknown_tools_bad_arguments_errors_and_timeouts_become_results(admin: AdminStore) -> None:
    run = ToolRun([Echo()], event(), admin, settings(), _ignore)
    results = [t.content for t in await run.run([call("rm_rf", {}), call("echo", "{not json")])]
    assert results == ["没有名为 rm_rf 的工具可用。", "参数不是合法的 JSON，请重新调用。"]
    [failed] = await run.run([call("echo", {"fail": True})])
    assert failed.content == "工具出错：坏了"
    run = ToolRun([Echo()], event(), admin, settings(), _ignore)
    [crashed] = await run.run([call("echo", {"crash": True})])
    assert crashed.content == "工具出错了。"
    [slow] = await run.run([call("echo", {"wait": 5})])
    assert "超时" in slow.content


async def test_max_steps_end_the_offer_and_refuse_extra_calls(admin: AdminStore) -> None:
    echo = Echo()
    run = ToolRun([echo], event(), admin, settings(), _ignore)
    results = [t.content for t in await run.run([call("echo", {"n": n}, f"c{n}") for n in range(4)])]
    assert len(echo.calls) == 3 and "上限" in results[3]
    assert run.specs == []


async def test_a_slow_tool_sends_its_progress_notice_once(admin: AdminStore) -> None:
    notices: list[str] = []

    async def notify(text: str) -> None:
        notices.append(text)

    config = settings().model_copy(deep=True)
    config.response.timeout = 0.05
    run = ToolRun([Echo()], event(), admin, config, notify)
    await run.run([call("echo", {"wait": 0.2}, "a"), call("echo", {"wait": 0.2}, "b")])
    assert notices == ["正在回声…"] and run.notified


async def test_tool_calls_count_against_their_own_hourly_limit(admin: AdminStore) -> None:
    await admin.set_limit(TOOL + "member", member_target("9", "42"), 2)
    echo = Echo()
    config = settings()
    run = ToolRun([echo], event("9"), admin, config, _ignore)
    results = [t.content for t in await run.run([call("echo", {"n": n}, f"c{n}") for n in range(3)])]
    assert len(echo.calls) == 2 and results[2] == config.ratelimit.tool_exceed
    assert run.specs == []  # nothing more is offered in this answer
    assert await admin.count(TOOL + "member", member_target("9", "42")) == 2


async def test_tools_switched_off_in_a_group(admin: AdminStore) -> None:
    assert not await tools_switched_off(admin, event("9"))
    await admin.set_limit(TOOL + "group", "9", 0)
    assert await tools_switched_off(admin, event("9"))
    assert not await tools_switched_off(admin, event("8"))


def test_stored_tool_rows_become_the_call_and_its_result() -> None:
    row = json.dumps({"id": "c1", "name": "echo", "arguments": '{"a": 1}', "result": "ok"})
    history = [
        StoredTurn("user", "hi", 1),
        StoredTurn("tool", row, 5),
        StoredTurn("tool", "not json", 2),
        StoredTurn("assistant", "done", 1),
    ]
    turns = history_turns(history)
    assert [turn.role for turn in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[1].tool_calls == (ToolCall("c1", "echo", '{"a": 1}'),)
    assert (turns[2].tool_call_id, turns[2].content) == ("c1", "ok")
    assert StoredTool.from_turn(history[1]) == StoredTool("c1", "echo", '{"a": 1}', "ok")


async def _ignore(text: str) -> None:
    pass
