"""Managers' commands in chatgpt-mirai-qq-bot v2's syntax: limits, usage, blacklist, reload, status."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from conversation.commands import CommandTable
from conversation.job import Job
from conversation.presets import PresetBook
from storage.admin import DRAW, TOOL, AdminStore

SCOPES = {"好友": "user", "群组": "group", "成员": "member"}
DEFAULT_WORDS = ("默认", "default")
MEMBER_FORMAT = "成员请写成 群号:QQ号，例如 .设置 成员 123456:654321 额度为 10 条/小时"


@dataclass(frozen=True, slots=True)
class _Quota:
    """What a kind of limit counts, in the words of its commands: messages, or drawn pictures."""

    prefix: str  # of the store's scopes
    name: str
    unit: str
    used: str


MESSAGES = _Quota("", "额度", "条", "已使用")
PICTURES = _Quota(DRAW, "画图额度", "个", "已画")
TOOL_CALLS = _Quota(TOOL, "工具额度", "次", "已调用工具")


class AdminCommands:
    """Commands only managers may run (others get no reaction: the table marks them admin-only)."""

    def __init__(
        self,
        store: AdminStore,
        presets: PresetBook,
        reload: Callable[[], Awaitable[str]],
        status: Callable[[], str],
    ) -> None:
        self.store = store
        self.presets = presets
        self.reload_config = reload
        self.status_text = status

    def register(self, table: CommandTable) -> None:
        scopes = "|".join(SCOPES)
        table.add_pattern(
            rf"\.设置 ?({scopes}) ?(\S+) ?额度为 ?(\d+) ?条/小时",
            functools.partial(self.set_limit, quota=MESSAGES),
            admin_only=True,
        )
        table.add_pattern(
            rf"\.查看 ?({scopes}) ?(\S+) ?的使用情况", functools.partial(self.usage, quota=MESSAGES), admin_only=True
        )
        # v2's drawing limits: "个/小时" (张 accepted too); the target may touch the words (non-greedy)
        table.add_pattern(
            rf"\.设置 ?({scopes}) ?(\S+?) ?画图额度为 ?(\d+) ?[个张]/小时",
            functools.partial(self.set_limit, quota=PICTURES),
            admin_only=True,
        )
        table.add_pattern(
            rf"\.查看 ?({scopes}) ?(\S+?) ?的画图使用情况",
            functools.partial(self.usage, quota=PICTURES),
            admin_only=True,
        )
        # tool calls ([tools]): their own hourly limit; 工具 关闭 is a limit of 0 for the group
        table.add_pattern(
            rf"\.设置 ?({scopes}) ?(\S+?) ?工具额度为 ?(\d+) ?次/小时",
            functools.partial(self.set_limit, quota=TOOL_CALLS),
            admin_only=True,
        )
        table.add_pattern(
            rf"\.查看 ?({scopes}) ?(\S+?) ?的工具使用情况",
            functools.partial(self.usage, quota=TOOL_CALLS),
            admin_only=True,
        )
        table.add_pattern(r"\.设置 ?群组 ?(\S+?) ?工具 ?(开启|关闭)", self.switch_tools, admin_only=True)
        table.add_words([".预设列表"], self.preset_list, admin_only=True)
        table.add_words([".重新加载配置文件"], self.reload, admin_only=True)
        table.add_pattern(r"\.拉黑 ?(\d+)(?: +(\d+))?", self.block, admin_only=True)
        table.add_pattern(r"\.解除拉黑 ?(\d+)(?: +(\d+))?", self.unblock, admin_only=True)
        table.add_words([".状态"], self.status, admin_only=True)

    async def set_limit(self, job: Job, argument: str, *, quota: _Quota) -> str:
        scope_word, target, count = argument.split(" ")
        target = "default" if target in DEFAULT_WORDS else target
        try:
            await self.store.set_limit(quota.prefix + SCOPES[scope_word], target, int(count))
        except ValueError:
            return MEMBER_FORMAT if scope_word == "成员" else f"无法设置 {target} 的{quota.name}。"
        who = "默认" if target == "default" else target
        return f"已设置{scope_word} {who} 的{quota.name}为 {count} {quota.unit}/小时。"

    async def usage(self, job: Job, argument: str, *, quota: _Quota) -> str:
        scope_word, target = argument.split(" ")
        scope = quota.prefix + SCOPES[scope_word]
        target = "default" if target in DEFAULT_WORDS else target
        try:
            limit = await self.store.limit_for(scope, target)
            used = 0 if target == "default" else await self.store.count(scope, target)
        except ValueError:
            return MEMBER_FORMAT if scope_word == "成员" else f"无法查看 {target} 的使用情况。"
        shown = "不限" if limit is None else f"{limit} {quota.unit}/小时"
        if target == "default":
            return f"{scope_word}的默认{quota.name}：{shown}。"
        if limit is None:
            return f"{scope_word} {target} 没有{quota.name}限制（没有额度时不统计用量）。"
        return f"{scope_word} {target} 最近一小时{quota.used} {used} {quota.unit}，{quota.name} {shown}。"

    async def switch_tools(self, job: Job, argument: str) -> str:
        """Tools off in a group (a tool limit of 0) or back on (its own tool limit removed)."""
        target, word = argument.split(" ")
        target = "default" if target in DEFAULT_WORDS else target
        who = "所有群" if target == "default" else f"群 {target} "
        if word == "关闭":
            await self.store.set_limit(TOOL + "group", target, 0)
            return f"已关闭{who}的工具。"
        await self.store.clear_limit(TOOL + "group", target)
        return f"已开启{who}的工具（按工具额度和权限）。"

    async def preset_list(self, job: Job, _: str) -> str:
        names = self.presets.names()
        return "当前可用的预设：\n" + "\n".join(names) if names else "没有可用的预设。"

    async def reload(self, job: Job, _: str) -> str:
        return await self.reload_config()

    async def block(self, job: Job, argument: str) -> str:
        return await self._blacklist(argument, block=True)

    async def unblock(self, job: Job, argument: str) -> str:
        return await self._blacklist(argument, block=False)

    async def _blacklist(self, argument: str, block: bool) -> str:
        """`<QQ号|群号>` covers both (the number alone cannot say which); `<QQ号> <群号>` one member."""
        parts = argument.split(" ")
        if len(parts) == 2:
            entries = [("member", f"{parts[1]}:{parts[0]}")]
        else:
            entries = [("user", parts[0]), ("group", parts[0])]
        changed = False
        for scope, target in entries:
            done = await (self.store.block(scope, target) if block else self.store.unblock(scope, target))
            changed = changed or done
        what = f"群 {parts[1]} 中的 {parts[0]}" if len(parts) == 2 else parts[0]
        if block:
            return f"已拉黑 {what}。" if changed else f"{what} 已经在黑名单中。"
        return f"已解除拉黑 {what}。" if changed else f"{what} 不在黑名单中。"

    async def status(self, job: Job, _: str) -> str:
        return self.status_text()
