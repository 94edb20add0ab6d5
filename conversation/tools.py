"""Tools in the conversation: which ones a sender may use, running the model's calls, and their history."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from core.config import Settings, ToolAccess
from core.errors import StorageError
from core.event import MessageEvent
from core.metrics import OK, Metrics
from llm.base import ChatTurn, ToolCall
from storage.admin import TOOL, AdminStore
from storage.base import StoredTool, StoredTurn
from tools.base import Tool, ToolError

if TYPE_CHECKING:
    from tools.mcp import MCPTools

log = logger.bind(adapter="tools")

RESULT_CHARS = 20_000  # a tool result handed to the model (and stored) is cut here
ARGUMENTS_LOGGED = 300


class ToolBox:
    """Every tool the model could be offered: the built-in ones and the MCP servers' tools that are up."""

    def __init__(self, settings: Settings, mcp: MCPTools | None = None) -> None:
        self.mcp = mcp
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        self.settings = settings.tools
        self._builtin: list[Tool] = []
        if settings.tools.enable:
            from tools.builtin import builtin_tools  # loaded only by bots that use tools

            self._builtin = builtin_tools(settings.tools)

    @property
    def enabled(self) -> bool:
        return self.settings.enable

    def all(self) -> list[Tool]:
        """The tools there are now (an MCP server that is down has none)."""
        if not self.enabled:
            return []
        found = list(self._builtin)
        if self.mcp is not None:
            found += self.mcp.tools()
        return found

    def access(self, name: str) -> ToolAccess:
        return self.settings.allowed.get(name, self.settings.default_access)

    def allowed(self, event: MessageEvent, admin: bool) -> list[Tool]:
        """The tools the sender of `event` may have the model use (`[tools] allowed`)."""
        return [tool for tool in self.all() if may_use(self.access(tool.spec.name), event, admin)]


def may_use(access: ToolAccess, event: MessageEvent, admin: bool) -> bool:
    """ "everyone", "admins" (the adapter's managers), or a list of groups where everyone may."""
    if access == "everyone":
        return True
    if access == "admins":
        return admin
    return event.is_group and event.group_id in access


class ToolRun:
    """The tool calls of one answer: offered tools, each call run under its timeout and the sender's
    tool limit, a notice when they run long, and what the history keeps of them."""

    def __init__(
        self,
        tools: Sequence[Tool],
        event: MessageEvent,
        admin: AdminStore,
        settings: Settings,
        notify: Callable[[str], Awaitable[None]],
        metrics: Metrics | None = None,
    ) -> None:
        self.tools = {tool.spec.name: tool for tool in tools}
        self.metrics = metrics or Metrics()
        self.event = event
        self.admin = admin
        self.settings = settings
        self.notify = notify
        self.steps = 0
        self.notified = False  # a progress notice went out (the caller's "still thinking" one is then not needed)
        self.exhausted = False  # the sender's tool limit is used up: no more tools in this answer
        self.stored: list[StoredTool] = []

    @property
    def specs(self) -> list[dict[str, Any]]:
        """The request's `tools`, while calls are left in this answer."""
        if self.exhausted or self.steps >= self.settings.tools.max_steps:
            return []
        return [tool.spec.openai() for tool in self.tools.values()]

    async def run(self, calls: Sequence[ToolCall]) -> list[ChatTurn]:
        """Run the model's calls at once; their results as tool turns, in the calls' order. Never raises."""
        room = self.settings.tools.max_steps - self.steps
        self.steps += len(calls)
        tasks = [asyncio.ensure_future(self._one(call, allowed=i < room)) for i, call in enumerate(calls)]
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.response.timeout)
            if pending and not self.notified:
                self.notified = True
                await self._notify_progress([calls[tasks.index(task)] for task in pending])
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        turns: list[ChatTurn] = []
        for call, result in zip(calls, results, strict=True):
            self.stored.append(StoredTool(call.id, call.name, call.arguments, result))
            turns.append(ChatTurn("tool", result, tool_call_id=call.id, name=call.name))
        return turns

    async def _one(self, call: ToolCall, allowed: bool) -> str:
        result, outcome = await self._outcome(call, allowed)
        self.metrics.tool_call(call.name if call.name in self.tools else "(unknown)", outcome)
        return result

    async def _outcome(self, call: ToolCall, allowed: bool) -> tuple[str, str]:
        """The result the model gets, and how the call went (for /metrics)."""
        tool = self.tools.get(call.name)
        if tool is None:  # a name the model made up, or a tool the sender may not use
            return f"没有名为 {call.name} 的工具可用。", "refused"
        if not allowed:
            return f"本次回答的工具调用次数已达上限（{self.settings.tools.max_steps} 次）。", "refused"
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return "参数不是合法的 JSON，请重新调用。", "bad_arguments"
        if not isinstance(arguments, dict):
            return "参数应为 JSON 对象，请重新调用。", "bad_arguments"
        if not await self._within_limit():
            return self.settings.ratelimit.tool_exceed, "rate_limited"
        started = time.monotonic()
        log.debug("tool {} called with {}", call.name, call.arguments[:ARGUMENTS_LOGGED])
        try:
            async with asyncio.timeout(self.settings.tools.timeout):
                result = await tool.call(arguments)
        except TimeoutError:
            log.warning("tool {} gave no result within {:g} s", call.name, self.settings.tools.timeout)
            return f"工具 {call.name} 超时，没有结果。", "timeout"
        except ToolError as exc:
            log.info("tool {} failed: {}", call.name, exc)
            return f"工具出错：{exc}", "error"
        except Exception:
            log.exception("tool {} failed unexpectedly", call.name)
            return "工具出错了。", "error"
        result = result[:RESULT_CHARS]
        log.debug("tool {} answered in {:.2f} s: {}", call.name, time.monotonic() - started, result[:ARGUMENTS_LOGGED])
        return result, OK

    async def _within_limit(self) -> bool:
        """Count one call against the sender's tool limits (`.设置 … 工具额度`), if any is set."""
        event = self.event
        try:
            check = await self.admin.take_for_sender(TOOL, event.user_id, event.group_id if event.is_group else "")
        except StorageError:
            return False  # the store logged it; no uncounted tool calls meanwhile
        if check is not None and not check.allowed:
            self.exhausted = True
            return False
        return True

    async def _notify_progress(self, calls: Sequence[ToolCall]) -> None:
        texts = dict.fromkeys(
            (tool.spec.progress or f"正在使用工具 {name}…")
            for name in (call.name for call in calls)
            if (tool := self.tools.get(name)) is not None
        )
        if texts:
            try:
                await self.notify(" ".join(texts))
            except Exception:
                log.exception("sending the tool progress notice failed")


async def tools_switched_off(admin: AdminStore, event: MessageEvent) -> bool:
    """A manager switched tools off where `event` was said (`.设置 群组 … 工具 关闭`: a tool limit of 0)."""
    if not event.is_group:
        return await admin.limit_for(TOOL + "user", event.user_id) == 0
    return await admin.limit_for(TOOL + "group", event.group_id) == 0


def history_turns(history: Sequence[StoredTurn]) -> list[ChatTurn]:
    """Stored turns as the model sees them; a stored tool call becomes the assistant's call and its result."""
    turns: list[ChatTurn] = []
    for stored in history:
        if stored.role != "tool":
            turns.append(ChatTurn(stored.role, stored.content))  # type: ignore[arg-type]
            continue
        tool = StoredTool.from_turn(stored)
        if tool is None:
            continue
        call = ToolCall(tool.call_id, tool.name, tool.arguments)
        turns += [
            ChatTurn("assistant", "", tool_calls=(call,)),
            ChatTurn("tool", tool.result, tool_call_id=tool.call_id, name=tool.name),
        ]
    return turns
