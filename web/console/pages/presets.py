"""预设 Presets: list, view, create, edit and delete preset files; every change is checked first and applies at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from conversation.presets import (
    MAX_PRESET_BYTES,
    ROLE_WORDS,
    Preset,
    PresetBook,
    PresetError,
    check_preset,
    check_preset_name,
    parse_preset,
)

if TYPE_CHECKING:
    from web.console.app import Console, Handler

ORDER = 40
FIRST_LINE_CHARS = 80
NEW_PRESET_TEXT = "system: 你是一个乐于助人的助手。现在是 {date}。\n\nuser_send: {nickname}说：{prompt}\n"


@dataclass(frozen=True)
class PresetRow:
    """One line of the list (and the head of the view page)."""

    name: str
    file: str
    aliases: list[str]
    first_line: str
    tokens: int
    default: bool
    editable: bool


def setup(console: Console) -> None:
    pages = PresetPages(console)
    console.page("/presets", "预设", pages.shown(pages.index))
    console.get("/presets/new", pages.shown(pages.new_form))
    console.post("/presets/new", pages.shown(pages.create))
    console.get("/presets/view", pages.shown(pages.view))
    console.get("/presets/edit", pages.shown(pages.edit_form))
    console.post("/presets/edit", pages.shown(pages.update))
    console.get("/presets/delete", pages.shown(pages.delete_form))
    console.post("/presets/delete", pages.shown(pages.delete))
    console.post("/presets/check", pages.shown(pages.check))


class Refusal(Exception):
    """A request this page cannot do; shown as a page with the one-line reason and a way back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PresetPages:
    """The handlers; every change goes through `bot.presets` (PresetBook), which rescans at once."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def shown(self, handler: Handler) -> Handler:
        """`handler` with its Refusal rendered as a page (4xx), never a traceback."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Refusal as refusal:
                return self.console.render(request, "presets_error.html", status=refusal.status, reason=refusal.reason)

        return handle

    @property
    def book(self) -> PresetBook:
        return self.console.bot.presets

    # --- reading --------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        book = self.book
        folder = book.folder()
        return self.console.render(
            request,
            "presets.html",
            rows=[self._row(preset) for preset in book.presets()],
            folder=str(folder),
            folder_missing=not folder.is_dir(),
            default_name=book.settings.default,
            default_found=bool(book.default_preset().path),
            notice=_notice(request.query.get("done", "")),
        )

    async def view(self, request: web.Request) -> web.Response:
        preset = self._find(request.query.get("name", ""))
        try:
            text = self.book.text_of(preset)
        except PresetError as exc:
            text, error = "", str(exc)
        else:
            error = ""
        return self.console.render(
            request,
            "presets_view.html",
            row=self._row(preset),
            preset=preset,
            text=text,
            error=error,
            load_command=_load_command(self.console, preset.name),
            notice=_notice(request.query.get("done", "")),
        )

    # --- creating and editing -------------------------------------------------------------------

    async def new_form(self, request: web.Request) -> web.Response:
        return self._form(request, "new", name="", text=NEW_PRESET_TEXT)

    async def create(self, request: web.Request) -> web.StreamResponse:
        form = await _form_of(request)
        name, text = _field(form, "name").strip(), _field(form, "text")
        name_error = check_preset_name(name)
        if name_error:  # the text's problems are shown as well, so one round trip finds them all
            return self._form(request, "new", name=name, text=text, name_error=name_error, status=400)
        try:
            preset = self.book.create(name, text)
        except PresetError as exc:
            return self._form(request, "new", name=name, text=text, error=exc, status=400)
        raise web.HTTPSeeOther(_view_url(preset.name, "created"))

    async def edit_form(self, request: web.Request) -> web.Response:
        preset = self._find(request.query.get("name", ""))
        if not self.book.editable(preset):
            raise Refusal(400, "这个预设的文件不在预设目录里，只能查看 (read-only)")
        try:
            text = self.book.text_of(preset)
        except PresetError as exc:
            raise Refusal(400, str(exc)) from exc
        return self._form(request, "edit", name=preset.name, text=text)

    async def update(self, request: web.Request) -> web.StreamResponse:
        form = await _form_of(request)
        name, text = _field(form, "name"), _field(form, "text")
        preset = self._find(name)
        try:
            saved = self.book.update(preset.name, text)
        except PresetError as exc:
            return self._form(request, "edit", name=preset.name, text=text, error=exc, status=400)
        raise web.HTTPSeeOther(_view_url(saved.name, "saved"))

    async def check(self, request: web.Request) -> web.Response:
        """The problems of the text in the form, for the 检查 button (htmx); always 200 so htmx shows them."""
        form = await _form_of(request)
        text = _field(form, "text")
        problems = check_preset(text)
        tokens = 0 if problems else parse_preset(text).tokens
        return self.console.render(request, "presets_problems.html", problems=problems, checked=True, tokens=tokens)

    # --- deleting -------------------------------------------------------------------------------

    async def delete_form(self, request: web.Request) -> web.Response:
        preset = self._find(request.query.get("name", ""))
        reason = self._undeletable(preset)
        if reason:
            raise Refusal(400, reason)
        return self.console.render(request, "presets_delete.html", row=self._row(preset))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        form = await _form_of(request)
        preset = self._find(_field(form, "name"))
        if _field(form, "confirm") != preset.name:
            raise Refusal(400, "请在确认页面上确认删除 (confirm the deletion first)")
        try:
            self.book.delete(preset.name)
        except PresetError as exc:
            raise Refusal(400, str(exc)) from exc
        raise web.HTTPSeeOther("/presets?done=deleted")

    # --- helpers --------------------------------------------------------------------------------

    def _find(self, name: str) -> Preset:
        preset = self.book.get(name) if name else None
        if preset is None:
            reason = f"没有找到预设 {name} (no such preset)" if name else "请指定预设名称 (name required)"
            raise Refusal(404 if name else 400, reason)
        return preset

    def _undeletable(self, preset: Preset) -> str:
        if not self.book.editable(preset):
            return "这个预设的文件不在预设目录里，只能查看 (read-only)"
        if self.book.is_default(preset):
            return f"{preset.name} 是默认预设（[presets] default），不能删除 (the default preset)"
        return ""

    def _row(self, preset: Preset) -> PresetRow:
        book = self.book
        return PresetRow(
            name=preset.name,
            file=_shown_path(book.folder(), preset.path),
            aliases=book.aliases_of(preset.name),
            first_line=_first_system_line(preset),
            tokens=preset.tokens,
            default=book.is_default(preset),
            editable=book.editable(preset),
        )

    def _form(
        self,
        request: web.Request,
        mode: str,
        *,
        name: str,
        text: str,
        error: PresetError | None = None,
        name_error: str = "",
        status: int = 200,
    ) -> web.Response:
        """The editor; on a refusal the user's text stays, the name's problem beside the name, the text's beside it."""
        problems = error.problems if error is not None else tuple(check_preset(text)) if name_error else ()
        return self.console.render(
            request,
            "presets_form.html",
            status=status,
            mode=mode,
            name=name,
            text=text,
            name_error=name_error,
            error=str(error) if error is not None else "",
            problems=problems,
            checked=False,
            tokens=0,
            max_bytes=MAX_PRESET_BYTES,
            role_words=ROLE_WORDS,
        )


async def _form_of(request: web.Request) -> MultiDictProxy[Any]:
    try:
        return await request.post()
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal(400, "表单无法解析 (bad form)") from exc


def _field(form: MultiDictProxy[Any], key: str) -> str:
    """A text field of the form; "" when it is missing or is a file."""
    value = form.get(key, "")
    return value if isinstance(value, str) else ""


def _first_system_line(preset: Preset) -> str:
    system = next((turn.content for turn in preset.turns if turn.role == "system"), "")
    line = next((part.strip() for part in system.splitlines() if part.strip()), "")
    return line if len(line) <= FIRST_LINE_CHARS else line[: FIRST_LINE_CHARS - 1] + "…"


def _shown_path(folder: Path, path: str) -> str:
    """The file relative to scan_dir when it is inside, else as configured."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def _load_command(console: Console, name: str) -> str:
    """What a user sends in chat to switch to `name` (from `[presets] command`); "" when it cannot be sent.

    The usual pattern is a fixed text and one group, such as `加载预设 (\\w+)`; `\\w` takes no `-`.
    """
    pattern = console.bot.settings.presets.command
    prefix, found, _ = pattern.partition("(")
    if not found or any(char in prefix for char in "\\^$.|?*+[]{}"):
        prefix = "加载预设 "  # a pattern too clever to fill in: show the default command
    command = f"{prefix}{name}"
    try:
        matched = re.fullmatch(pattern, command, re.DOTALL)
    except re.error:
        return ""
    return command if matched and " ".join(g.strip() for g in matched.groups() if g) == name else ""


def _view_url(name: str, done: str) -> str:
    return str(URL("/presets/view").with_query(name=name, done=done))


def _notice(done: str) -> str:
    return {
        "created": "预设已创建，立即生效 (created, in use now)",
        "saved": "预设已保存，下一条消息起生效 (saved, used from the next message)",
        "deleted": "预设已删除 (deleted)",
    }.get(done, "")
