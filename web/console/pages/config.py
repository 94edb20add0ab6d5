"""配置 Config: a form per section; saving validates with the loader, writes via tomlkit, backs up and reloads."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit
import tomlkit.exceptions
from aiohttp import web
from loguru import logger

from core.config import MAX_CONFIG_BYTES, decode_text, loads_config, read_capped
from core.errors import ConfigError
from core.files import replace_atomically
from web.console.config_form import (
    EntryArray,
    SectionForm,
    add_entry,
    apply_form,
    attach_error,
    entry_count,
    find_array,
    new_entry_form,
    remove_entry,
    section_form,
    section_help,
    sections,
)

if TYPE_CHECKING:
    from web.console.app import Console

ORDER = 50
KEEP_BACKUPS = 5
VERSION_FIELD = "file_version"
ARRAY_FIELD = "array"  # which array of tables an add or a removal is about ("openai.accounts")
ENTRY_FIELD = "entry"  # the index of the entry to remove
CONFIRM_FIELD = "confirm"  # a removal is done only with confirm=yes
NO_ARRAY = "这一段没有可以添加或删除的条目 (this section has no entries to add or remove)"
UNCONFIRMED = "请勾选“确认删除”后再删除 (tick the confirmation to remove)"
BAD_ENTRY = "要删除的条目编号无效 (invalid entry number)"
_NOTICES = 32  # outcomes of recent saves, shown once after the redirect
NO_PLATFORM = "这样保存后没有启用任何聊天平台，机器人将无法启动 (no platform would be enabled: the bot could not start)"
WEB_AFTER_RESTART = (
    "[web] 的地址、端口等在重启后生效；新的控制台密码立即生效，需要重新登录 "
    "([web] host/port apply after a restart; a new console password applies now: log in again)"
)
STALE = (
    "配置文件在你打开页面之后被修改过，请查看最新内容后再改 "
    "(the file changed since this page was loaded: check it and edit again)"
)


@dataclass(frozen=True, slots=True)
class ConfigText:
    """The config file as read now; `version` tells whether it changed since a form was shown."""

    path: Path
    text: str
    version: str


def read_config(path: Path) -> ConfigText:
    """The file's text (UTF-8 or GBK) and a digest of its bytes; raises ValueError with the problem in words."""
    try:
        data = read_capped(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ValueError(f"找不到配置文件 {path} (file not found)") from None
    return ConfigText(path, decode_text(data), hashlib.sha256(data).hexdigest())


def backup_folder(path: Path) -> Path:
    """Where the previous versions of `path` go: `data/config-backups` beside it (in Docker the
    config's own folder is not writable, its `data` folder is)."""
    return path.parent / "data" / "config-backups"


def write_config(path: Path, text: str, now: float) -> Path:
    """Replace `path` with `text`, keeping the previous file in `backup_folder` (the newest
    KEEP_BACKUPS of them). Returns the backup's path; raises OSError."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1e6) % 1_000_000:06d}"
    folder = backup_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    backup = folder / f"{path.name}.{stamp}.bak"
    shutil.copy2(path, backup)
    try:
        replace_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        # A file bind-mounted on its own (Docker) cannot be replaced, and its folder may not be
        # writable: then the file itself is rewritten.
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM):
            raise
        _write_in_place(path, text)
    _prune_backups(folder, path.name)
    return backup


def _write_in_place(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def write_problem(exc: OSError) -> str:
    """Why the config file could not be written, as one line for the page."""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            "配置文件或其所在目录是只读的；Docker 中请去掉 config.toml 挂载的 :ro "
            f"(read-only: in Docker, mount config.toml without :ro): {exc.strerror}"
        )
    return f"无法写入配置文件 (cannot write the config file): {exc.strerror or type(exc).__name__}"


def _prune_backups(folder: Path, name: str) -> None:
    backups = sorted(p for p in folder.iterdir() if p.name.startswith(f"{name}.") and p.name.endswith(".bak"))
    for old in backups[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)


def setup(console: Console) -> None:
    lock = asyncio.Lock()  # one save at a time: each starts from the file the previous one wrote
    notices: OrderedDict[str, list[str]] = OrderedDict()

    def config_path() -> Path:
        return Path(console.bot.settings.path)

    async def index(request: web.Request) -> web.Response:
        path = config_path()
        try:
            document: dict[str, Any] = tomlkit.parse(read_config(path).text).unwrap()
            problem = ""
        except Exception as exc:  # unreadable or not TOML: say so, list the sections anyway
            document, problem = {}, _problem(exc)
        rows = [
            {"name": name, "platform": platform, "present": name in document, "help": _first_line(name)}
            for name, _, platform in sections()
        ]
        return console.render(request, "config.html", config_path=str(path), rows=rows, problem=problem)

    async def show(request: web.Request) -> web.Response:
        name = request.match_info["section"]
        if name not in _names():
            return _unknown(request, name)
        notice = notices.pop(request.query.get("notice", ""), [])
        try:
            current = read_config(config_path())
            form = section_form(name, tomlkit.parse(current.text))
        except Exception as exc:
            return _render(request, _empty_form(name, _problem(exc)), "", notice)
        return _render(request, form, current.version, notice)

    async def save(request: web.Request) -> web.StreamResponse:
        name = request.match_info["section"]
        if name not in _names():
            return _unknown(request, name)
        values = await _posted(request)
        if values is None:
            return web.Response(status=400, text=UNREADABLE)
        async with lock:
            return await _save(request, name, values)

    async def _save(request: web.Request, name: str, values: dict[str, list[str]]) -> web.StreamResponse:
        opened = _open(name)
        if isinstance(opened, SectionForm):
            return _render(request, opened, "", [], status=409)
        current, document = opened
        form = section_form(name, document)
        if _stale(form, current, values):
            return _render(request, form, current.version, [], status=409)
        changed = apply_form(form, values, document)
        if form.has_errors():
            return _render(request, form, current.version, [], status=400)
        if not changed:
            return _redirect(name, ["没有修改，配置文件未改动 (nothing changed)"])
        done = f"修改了 {changed} 项 ({changed} keys changed)"
        return await _commit(request, form, current, document, done)

    async def new_entry(request: web.Request) -> web.Response:
        name = request.match_info["section"]
        array = find_array(name, request.query.get(ARRAY_FIELD)) if name in _names() else None
        if array is None:
            return _no_array(request, name)
        try:
            current = read_config(config_path())
            form = new_entry_form(name, array, tomlkit.parse(current.text))
        except Exception as exc:
            return _render(request, _empty_form(name, _problem(exc)), "", [])
        return _render(request, form, current.version, [])

    async def add(request: web.Request) -> web.StreamResponse:
        name = request.match_info["section"]
        values = await _posted(request)
        if values is None:
            return web.Response(status=400, text=UNREADABLE)
        array = find_array(name, _last(values, ARRAY_FIELD)) if name in _names() else None
        if array is None:
            return _no_array(request, name)
        async with lock:
            return await _add(request, name, array, values)

    async def _add(
        request: web.Request, name: str, array: EntryArray, values: dict[str, list[str]]
    ) -> web.StreamResponse:
        opened = _open(name)
        if isinstance(opened, SectionForm):
            return _render(request, opened, "", [], status=409)
        current, document = opened
        form = new_entry_form(name, array, document)
        if _stale(form, current, values):
            return _render(request, form, current.version, [], status=409)
        try:
            add_entry(form, array, values, document)
        except ValueError as exc:
            form.error = str(exc)
        if form.has_errors():
            return _render(request, form, current.version, [], status=400)
        done = f"添加了 [[{array.key}]] 第 {entry_count(document, array)} 项 (entry added)"
        return await _commit(request, form, current, document, done)

    async def remove(request: web.Request) -> web.StreamResponse:
        name = request.match_info["section"]
        values = await _posted(request)
        if values is None:
            return web.Response(status=400, text=UNREADABLE)
        array = find_array(name, _last(values, ARRAY_FIELD)) if name in _names() else None
        if array is None:
            return _no_array(request, name)
        if _last(values, CONFIRM_FIELD) != "yes":
            return web.Response(status=400, text=UNCONFIRMED)
        index = _index(_last(values, ENTRY_FIELD))
        if index is None:
            return web.Response(status=400, text=BAD_ENTRY)
        async with lock:
            return await _remove(request, name, array, index, values)

    async def _remove(
        request: web.Request, name: str, array: EntryArray, index: int, values: dict[str, list[str]]
    ) -> web.StreamResponse:
        opened = _open(name)
        if isinstance(opened, SectionForm):
            return _render(request, opened, "", [], status=409)
        current, document = opened
        form = section_form(name, document)
        if _stale(form, current, values):
            return _render(request, form, current.version, [], status=409)
        try:
            remove_entry(array, index, document)
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))
        done = f"删除了 [{array.key}] 的第 {index + 1} 项 (entry removed)"
        return await _commit(request, form, current, document, done, on_fields=False)

    async def _posted(request: web.Request) -> dict[str, list[str]] | None:
        """Every text value of the posted form by name; None when the body cannot be read."""
        try:
            posted = await request.post()
        except ValueError:
            return None
        values: dict[str, list[str]] = {}
        for key, value in posted.items():
            if isinstance(value, str):
                values.setdefault(key, []).append(value)
        return values

    def _open(name: str) -> tuple[ConfigText, tomlkit.TOMLDocument] | SectionForm:
        """The config file as it is now and its parsed document, or a form saying why it cannot be read."""
        try:
            current = read_config(config_path())
            return current, tomlkit.parse(current.text)
        except Exception as exc:
            return _empty_form(name, _problem(exc))

    def _stale(form: SectionForm, current: ConfigText, values: dict[str, list[str]]) -> bool:
        """Whether the form was shown before the file last changed (then the form says so)."""
        if _last(values, VERSION_FIELD, current.version) == current.version:
            return False
        form.error = STALE
        return True

    async def _commit(
        request: web.Request,
        form: SectionForm,
        current: ConfigText,
        document: tomlkit.TOMLDocument,
        done: str,
        on_fields: bool = True,
    ) -> web.StreamResponse:
        """Validate the edited document with the loader, write it (keeping a backup), reload, redirect.
        The loader's complaint goes beside the field it names (`on_fields`), else above the form."""
        name, path = form.name, current.path
        text = tomlkit.dumps(document)
        try:
            fresh = loads_config(text, path)  # the loader decides, exactly as on start-up and reload
        except ConfigError as exc:
            if on_fields:
                attach_error(form, exc)
            else:
                form.error = exc.one_line()
            return _render(request, form, current.version, [], status=400)
        if not fresh.platforms() and not getattr(console.bot, "console", False):
            form.error = NO_PLATFORM  # the bot would refuse this file on reload and on the next start
            return _render(request, form, current.version, [], status=400)
        try:
            backup = await asyncio.to_thread(write_config, path, text, console.clock())
        except OSError as exc:
            logger.error("writing the config file {} failed: {}", path, exc.strerror or type(exc).__name__)
            form.error = write_problem(exc)
            return _render(request, form, current.version, [], status=409)
        logger.info("config section [{}] saved from the console: {}", name, done)
        outcome = await console.bot.reload()
        saved = f"已保存 {path.name}，{done}；原文件备份为 {backup} (saved; the old file is kept)"
        later = [WEB_AFTER_RESTART] if name == "web" else []
        return _redirect(name, [saved, outcome, *later, *fresh.warnings])

    def _redirect(name: str, lines: list[str]) -> web.StreamResponse:
        token = secrets.token_urlsafe(8)
        notices[token] = lines
        while len(notices) > _NOTICES:
            notices.popitem(last=False)
        raise web.HTTPSeeOther(f"/config/{name}?notice={token}")

    def _render(
        request: web.Request, form: SectionForm, version: str, notice: list[str], status: int = 200
    ) -> web.Response:
        return console.render(
            request,
            "config_section.html",
            status=status,
            form=form,
            version=version,
            version_field=VERSION_FIELD,
            array_field=ARRAY_FIELD,
            entry_field=ENTRY_FIELD,
            confirm_field=CONFIRM_FIELD,
            notice=notice,
            config_path=str(config_path()),
        )

    def _no_array(request: web.Request, name: str) -> web.Response:
        if name not in _names():
            return _unknown(request, name)
        return web.Response(status=400, text=NO_ARRAY)

    def _unknown(request: web.Request, name: str) -> web.Response:
        problem = f"没有名为 [{name}] 的配置段 (no such section)"
        return console.render(
            request, "config.html", status=404, config_path=str(config_path()), rows=[], problem=problem
        )

    console.page("/config", "配置", index)
    console.get("/config/{section}", show)
    console.post("/config/{section}", save)
    console.get("/config/{section}/new", new_entry)
    console.post("/config/{section}/new", add)
    console.post("/config/{section}/remove", remove)


UNREADABLE = "无法读取表单 (unreadable form)"


def _last(values: dict[str, list[str]], name: str, default: str = "") -> str:
    """The last value sent for `name`."""
    sent = values.get(name)
    return sent[-1] if sent else default


def _index(text: str) -> int | None:
    """An entry number as sent, or None when it is not one."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 6 else None


def _names() -> set[str]:
    return {name for name, _, _ in sections()}


def _first_line(name: str) -> str:
    return section_help(name).split("\n", 1)[0]


def _empty_form(name: str, problem: str) -> SectionForm:
    platform = next(p for n, _, p in sections() if n == name)
    return SectionForm(name, "", platform, False, [], error=problem)


def _problem(exc: Exception) -> str:
    """One line for a config file that cannot be read or parsed (never the file's content)."""
    if isinstance(exc, ValueError) and not isinstance(exc, tomlkit.exceptions.ParseError):
        return f"无法读取配置文件 (cannot read the config file): {exc}"
    line = getattr(exc, "line", None)
    where = f" (第 {line} 行 / line {line})" if line else ""
    return f"配置文件不是有效的 TOML (not valid TOML){where}，请先用编辑器修复"
