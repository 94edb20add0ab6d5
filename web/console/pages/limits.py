"""额度与黑名单 Limits and blacklist: hourly message and drawing limits per user, group and member, their
use in the last hour, and the blacklist; every change goes through the AdminStore, so it applies at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDictProxy

from core.errors import StorageError
from storage.admin import DEFAULT, DRAW, AdminStore

if TYPE_CHECKING:
    from web.console.app import Console, Handler

ORDER = 60
KINDS = {"message": "", "draw": DRAW}  # the form's kind -> the store's scope prefix
KIND_NAMES = {"": "消息 messages", DRAW: "画图 drawing"}
SCOPE_NAMES = {"user": "好友 user", "group": "群组 group", "member": "成员 member"}
SCOPE_ORDER = {scope: rank for rank, scope in enumerate(SCOPE_NAMES)}
DEFAULT_WORDS = (DEFAULT, "默认")
MAX_LIMIT = 1_000_000
# QQ numbers are digits; the official bot API's openids are letters and digits.
_ID = re.compile(r"[0-9A-Za-z_\-]{1,64}")


class Refusal(Exception):
    """Bad input: answered 400 with this one-line reason."""


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One limit as shown: the store's scope split into kind and scope, and the last hour's use."""

    kind: str  # "message" / "draw"
    scope: str  # user / group / member
    target: str
    per_hour: int
    used: int | None  # None for a scope's default (it has no usage of its own)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A target counted in the last hour, with the limit that applies to it (own or default)."""

    kind: str
    scope: str
    target: str
    used: int
    per_hour: int | None


def setup(console: Console) -> None:
    pages = LimitPages(console)
    console.page("/limits", "额度与黑名单", pages.index)
    console.post("/limits/set", pages.refused(pages.set_limit))
    console.post("/limits/clear", pages.refused(pages.clear_limit))
    console.post("/limits/block", pages.refused(pages.block))
    console.post("/limits/unblock", pages.refused(pages.unblock))


class LimitPages:
    """The handlers. A change answers htmx with the refreshed tables, a plain form with a redirect."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @property
    def admin(self) -> AdminStore:
        return self.console.bot.admin

    def refused(self, handler: Handler) -> Handler:
        """`handler` with bad input answered 400 and a database failure 503, each with one line."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Refusal as refusal:
                return await self._answer(request, error=str(refusal), status=400)
            except StorageError:
                return web.Response(status=503, text="数据库暂时不可用，请稍后再试 (the database is unavailable)")

        return handle

    # --- pages ----------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        try:
            facts = await self._facts()
        except StorageError:
            return web.Response(status=503, text="数据库暂时不可用，请稍后再试 (the database is unavailable)")
        return self.console.render(request, "limits.html", notice="", error="", **facts)

    async def _answer(self, request: web.Request, notice: str = "", error: str = "", status: int = 200) -> web.Response:
        if not request.headers.get("HX-Request"):
            if error:
                return web.Response(status=status, text=error)
            raise web.HTTPSeeOther("/limits")
        facts = await self._facts()
        return self.console.render(request, "limits_body.html", status=status, notice=notice, error=error, **facts)

    async def _facts(self) -> dict[str, Any]:
        limits = await self.admin.limits()
        own = [key for key in limits if key[1] != DEFAULT]
        used = await self.admin.counts(own)
        rows = [
            LimitRow(_kind(scope), scope.removeprefix(DRAW), target, per_hour, used.get((scope, target)))
            for (scope, target), per_hour in sorted(limits.items(), key=_limit_order)
        ]
        busiest = [
            UsageRow(_kind(scope), scope.removeprefix(DRAW), target, count, _applying(limits, scope, target))
            for scope, target, count in await self.admin.busiest()
        ]
        return {
            "message_limits": [row for row in rows if row.kind == "message"],
            "draw_limits": [row for row in rows if row.kind == "draw"],
            "usage": busiest,
            "blocked": sorted(await self.admin.blocked(), key=lambda key: (_scope_rank(key[0]), key[1])),
            "scope_names": SCOPE_NAMES,
            "kind_names": {"message": KIND_NAMES[""], "draw": KIND_NAMES[DRAW]},
        }

    # --- changes --------------------------------------------------------------------------------

    async def set_limit(self, request: web.Request) -> web.Response:
        form = await request.post()
        prefix, scope = _kind_field(form), _scope_field(form)
        target = _target_field(form, scope, default_ok=True)
        per_hour = _limit_field(form)
        await self.admin.set_limit(prefix + scope, target, per_hour)
        who = "默认" if target == DEFAULT else target
        blocked = "（0 表示不允许使用）" if per_hour == 0 else ""
        unit = "个" if prefix else "条"
        notice = f"已设置{SCOPE_NAMES[scope]} {who} 的{KIND_NAMES[prefix]}额度为 {per_hour} {unit}/小时{blocked}"
        return await self._answer(request, notice=notice)

    async def clear_limit(self, request: web.Request) -> web.Response:
        form = await request.post()
        prefix, scope = _kind_field(form), _scope_field(form)
        target = _target_field(form, scope, default_ok=True)
        gone = await self.admin.clear_limit(prefix + scope, target)
        who = "默认" if target == DEFAULT else target
        what = f"{SCOPE_NAMES[scope]} {who} 的{KIND_NAMES[prefix]}额度"
        return await self._answer(request, notice=f"已清除{what}" if gone else f"{what}本来就没有设置")

    async def block(self, request: web.Request) -> web.Response:
        form = await request.post()
        scope = _scope_field(form)
        target = _target_field(form, scope, default_ok=False)
        added = await self.admin.block(scope, target)
        who = f"{SCOPE_NAMES[scope]} {target}"
        return await self._answer(request, notice=f"已拉黑 {who}" if added else f"{who} 已经在黑名单中")

    async def unblock(self, request: web.Request) -> web.Response:
        form = await request.post()
        scope = _scope_field(form)
        target = _target_field(form, scope, default_ok=False)
        removed = await self.admin.unblock(scope, target)
        who = f"{SCOPE_NAMES[scope]} {target}"
        return await self._answer(request, notice=f"已解除拉黑 {who}" if removed else f"{who} 不在黑名单中")


# --- form fields (each raises Refusal with the reason) ------------------------------------------


def _text(form: MultiDictProxy[Any], name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _kind_field(form: MultiDictProxy[Any]) -> str:
    kind = _text(form, "kind") or "message"
    if kind not in KINDS:
        raise Refusal("额度类型应为 message 或 draw (kind must be message or draw)")
    return KINDS[kind]


def _scope_field(form: MultiDictProxy[Any]) -> str:
    scope = _text(form, "scope")
    if scope not in SCOPE_NAMES:
        raise Refusal("范围应为 user、group 或 member (scope must be user, group or member)")
    return scope


def _target_field(form: MultiDictProxy[Any], scope: str, *, default_ok: bool) -> str:
    target = _text(form, "target")
    if target in DEFAULT_WORDS:
        if default_ok:
            return DEFAULT
        raise Refusal("黑名单要写具体的号码，不能写 default (the blacklist needs a number, not default)")
    if scope == "member":
        group_id, colon, user_id = target.partition(":")
        if colon and _ID.fullmatch(group_id) and _ID.fullmatch(user_id):
            return target
        raise Refusal("成员请写成 群号:QQ号，例如 123456:654321 (member must be group_id:user_id)")
    if _ID.fullmatch(target):
        return target
    wanted = "QQ号" if scope == "user" else "群号"
    extra = " 或 default" if default_ok else ""
    raise Refusal(f"请填写{wanted}{extra} (target must be an id{' or default' if default_ok else ''})")


def _limit_field(form: MultiDictProxy[Any]) -> int:
    given = _text(form, "limit")
    if not given.isascii() or not given.isdigit() or int(given) > MAX_LIMIT:
        raise Refusal(
            f"额度应为 0 到 {MAX_LIMIT} 的整数，0 表示不允许使用 (limit must be a whole number 0–{MAX_LIMIT})"
        )
    return int(given)


# --- display ------------------------------------------------------------------------------------


def _kind(scope: str) -> str:
    return "draw" if scope.startswith(DRAW) else "message"


def _limit_order(item: tuple[tuple[str, str], int]) -> tuple[int, bool, str]:
    (scope, target), _ = item
    return _scope_rank(scope.removeprefix(DRAW)), target != DEFAULT, target


def _scope_rank(scope: str) -> int:
    return SCOPE_ORDER.get(scope, len(SCOPE_ORDER))


def _applying(limits: dict[tuple[str, str], int], scope: str, target: str) -> int | None:
    """The limit counting this target: its own, else its scope's default (as AdminStore applies them)."""
    own = limits.get((scope, target))
    return own if own is not None else limits.get((scope, DEFAULT))
