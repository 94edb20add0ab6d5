"""The console's config page, through real sockets: forms from the schema, labels from the example, safe saves."""

from __future__ import annotations

import difflib
import errno
import html
import re
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from core.config import loads_config
from core.errors import ConfigError
from tests.conftest import VERIFY_KEY, eventually, free_port, start_bot
from tests.console_client import PASSWORD, ConsoleClient, console
from tests.fakes.openai_server import FakeOpenAI
from web.console.config_form import (
    add_entry,
    apply_form,
    attach_error,
    find_array,
    new_entry_form,
    parse_example,
    remove_entry,
    section_form,
    sections,
)
from web.console.pages.config import KEEP_BACKUPS, backup_folder, write_config

__all__ = ["console"]  # the fixture, used by name

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
API_KEY = "sk-test-1"
TOKEN = "mirai-ws-token-secret"
SECRETS = (PASSWORD, VERIFY_KEY, API_KEY, TOKEN)


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


class FormReader(HTMLParser):
    """What a browser would send for the page's config form: checked boxes, empty password inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self._in_form = False
        self._textarea: str | None = None
        self._select: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "config-form":
            self._in_form = True
        if not self._in_form:
            return
        if tag == "input" and a.get("name"):
            if a.get("type") != "checkbox" or "checked" in a:
                self.fields.append((a["name"], a.get("value", "")))
        elif tag == "textarea":
            self._textarea, self._text = a["name"], ""
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and "selected" in a:
            self.fields.append((self._select, a.get("value", "")))

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "textarea" and self._textarea is not None:
            # a browser drops the one newline right after <textarea>
            self.fields.append((self._textarea, self._text.removeprefix("\n")))
            self._textarea = None
        elif tag == "select":
            self._select = None


def form_of(page: str, **changes: str) -> list[tuple[str, str]]:
    reader = FormReader()
    reader.feed(page)
    assert reader.fields, "no config form on the page"
    fields = list(reader.fields)
    for name, value in changes.items():
        name = name.replace("__", ".")
        assert any(n == name for n, _ in fields) or "api_key" in name, name
        fields = [(n, value if n == name else v) for n, v in fields if n != name or value != "\0"]
        if not any(n == name for n, _ in fields):
            fields.append((name, value))
    return fields


def error_for(page: str, key: str) -> str:
    found = re.search(rf'class="error field-error" data-for="{re.escape(key)}">([^<]*)<', page)
    assert found, f"no error shown next to {key}"
    return html.unescape(found.group(1))


def commented_config(tmp_path: Path, fake_llm: FakeOpenAI) -> Path:
    """config.example.toml with every comment, set up for a bot on 127.0.0.1 talking to the fake LLM."""
    presets = tmp_path / "presets"
    presets.mkdir(exist_ok=True)
    (presets / "default.txt").write_text("system: 你是测试机器人。", encoding="utf-8")
    doc = tomlkit.parse(EXAMPLE.read_text(encoding="utf-8"))
    doc["mirai"].update(  # type: ignore[union-attr]
        {
            "api_key": VERIFY_KEY,
            "reverse_ws_host": "127.0.0.1",
            "reverse_ws_port": free_port(),
            "reverse_ws_token": TOKEN,
        }
    )
    account = doc["openai"]["accounts"][0]  # type: ignore[index]
    account.update({"api_key": API_KEY, "api_endpoint": fake_llm.base_url, "model": "m1"})
    doc["openai"]["gpt_params"].update({"stream": False, "timeout": 5})  # type: ignore[index, union-attr]
    doc["database"]["url"] = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.sqlite3'}"  # type: ignore[index]
    doc["presets"]["scan_dir"] = str(presets)  # type: ignore[index]
    doc["web"].update({"port": free_port(), "password": PASSWORD})  # type: ignore[union-attr]
    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
async def commented(tmp_path: Path, fake_llm: FakeOpenAI) -> AsyncIterator[ConsoleClient]:
    """A started bot whose config.toml is the commented example, and a logged-in console client."""
    app = await start_bot(commented_config(tmp_path, fake_llm))
    client = ConsoleClient(app)
    try:
        await client.login()
        yield client
    finally:
        await client.close()
        await app.stop()


def config_file(client: ConsoleClient) -> Path:
    return Path(client.app.settings.path)


def backups(path: Path) -> list[Path]:
    folder = backup_folder(path)
    return sorted(folder.glob(f"{path.name}.*.bak")) if folder.exists() else []


# --- pages ---------------------------------------------------------------------------------------


async def test_every_section_renders_with_labels_from_the_example(commented: ConsoleClient) -> None:
    status, index = await commented.get("/config")
    assert status == 200 and 'data-section="response"' in index and 'data-section="onebot"' in index
    assert "机器人的 QQ 号" not in index and "上面那条提醒的内容" not in index  # key help is on the section page
    for name, _, _ in sections():
        status, page = await commented.get(f"/config/{name}")
        assert status == 200, name
        no_secret_in(page)
    _, page = await commented.get("/config/response")
    field = page[page.index('data-key="response.timeout_format"') :]
    assert "<code>timeout_format</code> 上面那条提醒的内容" in field[: field.index("</label>")]
    assert "群聊回复时是否引用（回复）触发的那条消息" in page  # the first key's comment
    _, page = await commented.get("/config/mirai")
    assert "机器人的 QQ 号（整数，不加引号）" in page and "Mirai 相关设置" in page
    _, page = await commented.get("/config/onebot")
    assert "还没有 [onebot] 段" in page and "访问令牌，与 LLBot/NapCat 里的 token" in page  # commented-out keys too


async def test_a_saved_value_changes_only_its_line_and_is_applied(commented: ConsoleClient) -> None:
    path = config_file(commented)
    before = path.read_text(encoding="utf-8")
    _, page = await commented.get("/config/response")
    status, page = await commented.post(
        "/config/response", form_of(page, response__timeout_format='请稍等，我正在想 "好" 答案')
    )
    assert status == 200 and "已保存 config.toml" in page and "配置已重新加载" in page
    after = path.read_text(encoding="utf-8")
    changed = [(old, new) for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new]
    assert changed == [
        ('timeout_format = "我还在思考中，请再等一下~"', 'timeout_format = "请稍等，我正在想 \\"好\\" 答案"')
    ]
    assert commented.app.settings.response.timeout_format == '请稍等，我正在想 "好" 答案'
    [backup] = backups(path)
    assert backup.read_text(encoding="utf-8") == before
    no_secret_in(page)
    _, page = await commented.get("/config/response")
    assert "请稍等，我正在想 &#34;好&#34; 答案" in page


async def test_an_invalid_value_is_shown_next_to_its_field_and_nothing_is_written(commented: ConsoleClient) -> None:
    path = config_file(commented)
    before = path.read_bytes()
    for section, key, value, problem in (
        ("response", "response.timeout", "-1", "应大于 0"),
        ("trigger", "trigger.switch_model", "切换模型 (.+", "正则表达式无效"),
        ("openai", "openai.accounts[0].api_endpoint", "ftp://x", "http://"),
        ("mirai", "mirai.reverse_ws_port", "70000", "65535"),
    ):
        _, page = await commented.get(f"/config/{section}")
        status, page = await commented.post(f"/config/{section}", form_of(page, **{key.replace(".", "__"): value}))
        assert status == 400, key
        shown = error_for(page, key)
        # the very line the loader gives for the same edit
        edited = tomlkit.parse(before.decode("utf-8"))
        table: Any = edited
        *parents, name = re.split(r"\.|\[|\]\.?", key)
        for part in filter(None, parents):
            table = table[int(part)] if part.isdigit() else table[part]
        table[name] = int(value) if value.lstrip("-").isdigit() else value
        with pytest.raises(ConfigError) as caught:
            loads_config(tomlkit.dumps(edited), path)
        assert shown == caught.value.one_line() and problem in shown
        assert f'value="{html.escape(value)}"' in page or html.escape(value) in page  # what was typed stays
        no_secret_in(page)
    assert path.read_bytes() == before and not backups(path)
    assert commented.app.settings.response.timeout == 30


async def test_secrets_are_never_sent_and_survive_a_save(commented: ConsoleClient) -> None:
    path = config_file(commented)
    before = path.read_text(encoding="utf-8")
    _, page = await commented.get("/config/openai")
    assert page.count("已设置 (set)") >= 1 and 'type="password"' in page
    status, page = await commented.post("/config/openai", form_of(page, **{"openai__accounts[0]__model": "m2"}))
    assert status == 200 and "配置已重新加载" in page
    no_secret_in(page)
    after = path.read_text(encoding="utf-8")
    assert f'api_key = "{API_KEY}"' in after and 'model = "m2"' in after
    assert len([1 for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new]) == 1
    account = commented.app.settings.openai.accounts[0]
    assert account.model == "m2" and account.api_key.get_secret_value() == API_KEY
    # a new key replaces the old one, and is not shown back either
    _, page = await commented.get("/config/openai")
    status, page = await commented.post("/config/openai", form_of(page, **{"openai__accounts[0]__api_key": "sk-new-2"}))
    assert status == 200 and "sk-new-2" not in page
    assert commented.app.settings.openai.accounts[0].api_key.get_secret_value() == "sk-new-2"
    _, page = await commented.get("/config/web")
    status, page = await commented.post("/config/web", form_of(page, web__metrics_token="metrics-secret-1"))
    assert status == 200 and "重启后生效" in page and "metrics-secret-1" not in page
    assert 'metrics_token = "metrics-secret-1"' in path.read_text(encoding="utf-8")
    for name in ("mirai", "web"):
        _, page = await commented.get(f"/config/{name}")
        status, page = await commented.post(f"/config/{name}", form_of(page))
        assert status == 200 and "没有修改" in page
        no_secret_in(page)
    assert TOKEN in path.read_text(encoding="utf-8") and commented.app.settings.web.password.get_secret_value()


async def test_checkboxes_lists_and_tables_are_written_as_toml(commented: ConsoleClient) -> None:
    path = config_file(commented)
    _, page = await commented.get("/config/trigger")
    fields = [(n, v) for n, v in form_of(page) if not (n == "trigger.allow_switching_ai" and v == "true")]
    fields = [(n, "重来\r\n/reset\r\n" if n == "trigger.reset_command" else v) for n, v in fields]
    status, page = await commented.post("/config/trigger", fields)
    assert status == 200 and "修改了 2 项" in page
    text = path.read_text(encoding="utf-8")
    assert 'reset_command = ["重来", "/reset"]' in text and "allow_switching_ai = false" in text
    trigger = commented.app.settings.trigger
    assert trigger.reset_command == ["重来", "/reset"] and trigger.allow_switching_ai is False
    _, page = await commented.get("/config/presets")
    status, page = await commented.post(
        "/config/presets", form_of(page, presets__keywords="猫娘 = default\n正常=default")
    )
    assert status == 200 and commented.app.settings.presets.keywords == {"猫娘": "default", "正常": "default"}
    assert "# keywords = {" in path.read_text(encoding="utf-8")  # the example's commented line is still there
    _, page = await commented.get("/config/presets")
    status, page = await commented.post("/config/presets", form_of(page, presets__keywords="no equals sign"))
    assert status == 400 and "名称 = 值" in error_for(page, "presets.keywords")
    # a table whose values may be lists: who may use each tool
    _, page = await commented.get("/config/tools")
    allowed = 'web_search = ["123", "456"]\nweb_fetch = admins'
    status, page = await commented.post("/config/tools", form_of(page, tools__allowed=allowed))
    assert status == 200, page
    assert commented.app.settings.tools.allowed == {"web_search": ["123", "456"], "web_fetch": "admins"}
    _, page = await commented.get("/config/tools")
    assert "web_search = [&#34;123&#34;, &#34;456&#34;]" in page or 'web_search = ["123", "456"]' in page


async def test_a_form_from_before_another_save_is_refused(commented: ConsoleClient) -> None:
    _, old_page = await commented.get("/config/response")
    _, page = await commented.get("/config/response")
    status, _ = await commented.post("/config/response", form_of(page, response__reset="已重置"), csrf=False)
    assert status == 200  # a plain form (no script) carries the CSRF token as a field
    status, page = await commented.post("/config/response", form_of(old_page, response__stopped="停了"))
    assert status == 409 and "被修改过" in page
    assert commented.app.settings.response.reset == "已重置" and commented.app.settings.response.stopped != "停了"


async def test_bad_requests_get_4xx(commented: ConsoleClient) -> None:
    status, _ = await commented.get("/config/nosuch")
    assert status == 404
    status, _ = await commented.post("/config/nosuch", {"x": "1"})
    assert status == 404
    path = config_file(commented)
    before = path.read_bytes()
    status, page = await commented.post("/config/response", {"response.max_queue_size": "lots", "junk": "1"})
    assert status == 400 and "应为整数" in error_for(page, "response.max_queue_size")
    status, page = await commented.post("/config/response", {"response.mode": "<script>"})
    assert status == 400 and "&lt;script&gt;" in page and "<script>" not in page
    status, page = await commented.post("/config/response", {"nothing": "here"})
    assert status == 200 and "没有修改" in page
    assert path.read_bytes() == before


async def test_config_pages_need_a_login_and_the_csrf_token(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    for route in ("/config", "/config/response"):
        async with client.http.get(client.base + route, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"].startswith("/login")
    await client.login()
    status, _ = await client.post("/config/response", {"response.reset": "x"}, csrf=False)
    assert status == 403
    status, page = await client.get("/config/openai")
    assert status == 200
    no_secret_in(page)


# --- pieces --------------------------------------------------------------------------------------


def test_backups_keep_the_newest_five(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("v = 0\n", encoding="utf-8")
    path.chmod(0o600)
    for version in range(1, 8):
        write_config(path, f"v = {version}\n", 1_700_000_000.0 + version)
    kept = backups(path)
    assert len(kept) == KEEP_BACKUPS and [p.read_text() for p in kept] == [f"v = {v}\n" for v in range(2, 7)]
    assert path.read_text() == "v = 7\n" and path.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".config.toml.*.tmp"))


def test_example_comments_become_labels_and_help() -> None:
    notes = parse_example(
        "[a]\n# Section A\n# x: the first key\nx = 1\n\n# y's label\n# more about y\n# y = 2\n"
        "# not = a key 因为这不是 TOML\nz = 3\n# [b]\n# about b\n# w = true\n"
    )
    assert notes.sections == {"a": "Section A"}  # b's one line is its first key's
    assert notes.key("a", "x") == ("x: the first key", "")
    assert notes.key("a", "y") == ("y's label", "more about y")
    assert notes.key("a", "z") == ("not = a key 因为这不是 TOML", "")
    assert notes.key("b", "w") == ("about b", "") and notes.key("a", "missing") == ("missing", "")


def test_v2_table_names_are_edited_where_they_are() -> None:
    document = tomlkit.parse("[openai.gpt3_params]\ntemperature = 0.5  # warm\n")
    form = section_form("openai", document)
    [field] = [f for f in form.fields() if f.key == "openai.gpt_params.temperature"]
    assert field.text == "0.5"
    assert apply_form(form, {field.key: ["0.9"]}, document) == 1
    assert tomlkit.dumps(document) == "[openai.gpt3_params]\ntemperature = 0.9  # warm\n"


def test_a_missing_section_is_added_and_urls_with_passwords_are_secrets() -> None:
    document = tomlkit.parse("# mine\n[database]\nurl = 'postgresql+asyncpg://bot:pw@db/bot'\n")
    form = section_form("database", document)
    url = next(f for f in form.fields() if f.key == "database.url")
    assert url.kind == "secret" and url.text == "" and url.is_set
    assert apply_form(form, {url.key: [""]}, document) == 0  # empty keeps it
    form = section_form("satori", document)
    assert form.absent and form.platform
    sent = {f.key: [f.text] for f in form.fields() if f.kind != "bool"}
    assert apply_form(form, {**sent, "satori.url": ["http://127.0.0.1:5500"]}, document) == 1
    assert tomlkit.dumps(document).endswith('[satori]\nurl = "http://127.0.0.1:5500"\n')
    assert tomlkit.dumps(document).startswith("# mine\n[database]\nurl = 'postgresql+asyncpg://bot:pw@db/bot'\n")


def test_loader_errors_land_on_the_entry_they_name() -> None:
    text = "[[openai.accounts]]\napi_key = 'sk-x'\n[[onebot]]\nws_url = 'ws://a'\n[[onebot]]\nreverse_ws_port = 0\n"
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    form = section_form("onebot", tomlkit.parse(text))
    attach_error(form, caught.value)
    [bad] = [f for f in form.fields() if f.error]
    assert bad.key == "onebot[1].reverse_ws_port" and bad.error == caught.value.one_line()
    document = tomlkit.parse(text)
    assert apply_form(section_form("onebot", document), {bad.key: ["8566"]}, document) == 1
    assert tomlkit.dumps(document) == text.replace("reverse_ws_port = 0", "reverse_ws_port = 8566")
    document = tomlkit.parse("[[openai.accounts]]\napi_key = 'sk-x'\n[response]\nquote = 5\ntimeout = 3\n")
    document["response"] = 7
    form = section_form("response", document)
    assert apply_form(form, {"response.timeout": ["4"]}, document) == 0
    assert "不是表" in next(f.error for f in form.fields() if f.key == "response.timeout")
    text = "[[openai.accounts]]\napi_key = 'sk-x'\n[mirai]\napi_key = 'k'\n"
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    form = section_form("mirai", tomlkit.parse(text))
    attach_error(form, caught.value)
    assert [f.key for f in form.fields() if f.error] == ["mirai.qq"]
    form = section_form("response", tomlkit.parse(text))
    attach_error(form, caught.value)
    assert form.error == caught.value.one_line() and not any(f.error for f in form.fields())


async def test_a_save_that_leaves_no_platform_is_refused(commented: ConsoleClient) -> None:
    path = config_file(commented)
    before = path.read_bytes()
    _, page = await commented.get("/config/mirai")
    fields = [(n, v) for n, v in form_of(page) if not (n == "mirai.enable" and v == "true")]
    status, page = await commented.post("/config/mirai", fields)
    assert status == 400 and "没有启用任何聊天平台" in page
    assert path.read_bytes() == before and "mirai" in commented.app.adapters


def test_a_file_mounted_on_its_own_is_written_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text("v = 0\n", encoding="utf-8")

    def busy(source: str, target: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr("core.files.os.replace", busy)
    write_config(path, "v = 1\n", 1_700_000_000.0)
    assert path.read_text() == "v = 1\n" and [p.read_text() for p in backups(path)] == ["v = 0\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, "data"]  # no temporary file left


def test_a_config_in_a_folder_the_bot_cannot_write_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the Docker image /app belongs to root: no temporary file can be made beside config.toml.
    path = tmp_path / "config.toml"
    path.write_text("v = 0\n", encoding="utf-8")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("core.files.tempfile.mkstemp", denied)
    write_config(path, "v = 1\n", 1_700_000_000.0)
    assert path.read_text() == "v = 1\n" and [p.read_text() for p in backups(path)] == ["v = 0\n"]


async def test_a_read_only_file_is_reported_and_left_alone(
    commented: ConsoleClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_file(commented)
    before = path.read_bytes()

    def read_only(source: str, target: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("core.files.os.replace", read_only)
    _, page = await commented.get("/config/response")
    status, page = await commented.post("/config/response", form_of(page, response__reset="x"))
    assert status == 409 and "只读" in page and ":ro" in page
    assert path.read_bytes() == before and commented.app.settings.response.reset != "x"
    assert not list(path.parent.glob(".config.toml.*.tmp"))


# --- adding and removing entries of arrays of tables ----------------------------------------------

NEW_KEY = "sk-second-account-9"


def removed_and_added(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines `after` lost and gained against `before` (difflib)."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [line[2:] for line in diff if line.startswith("- ")], [line[2:] for line in diff if line.startswith("+ ")]


def version_of(page: str) -> str:
    found = re.search(r'name="file_version" value="([0-9a-f]*)"', page)
    assert found, "no file version on the page"
    return found.group(1)


def account_names(client: ConsoleClient) -> list[str]:
    return [state.name for state in client.app.model.states()]


async def add_account(client: ConsoleClient, **values: str) -> tuple[int, str]:
    status, page = await client.get("/config/openai/new?array=openai.accounts")
    assert status == 200 and 'action="/config/openai/new"' in page
    changes = {f"openai__accounts[1]__{name}": value for name, value in values.items()}
    return await client.post("/config/openai/new", form_of(page, **changes))


async def remove(client: ConsoleClient, section: str, array: str, entry: str, confirm: str = "yes") -> tuple[int, str]:
    _, page = await client.get(f"/config/{section}")
    form = {"array": array, "entry": entry, "confirm": confirm, "file_version": version_of(page)}
    return await client.post(f"/config/{section}/remove", form)


async def test_an_account_is_added_as_a_new_table_and_used(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    path = config_file(client)
    before = path.read_text(encoding="utf-8")
    status, page = await client.get("/config/openai")
    assert (
        status == 200
        and "添加账号 / Add an account" in page
        and 'href="/config/openai/new?array=openai.accounts"' in page
    )
    endpoint = client.app.settings.openai.accounts[0].api_endpoint
    _, page = await client.get("/config/openai/new?array=openai.accounts")
    assert "使用的模型名称" in page and 'type="password" id="f-openai.accounts[1].api_key"' in page
    status, page = await add_account(client, name="second", api_key=NEW_KEY, api_endpoint=endpoint, model="m2")
    assert status == 200 and "已保存 config.toml" in page and "配置已重新加载" in page
    assert NEW_KEY not in page
    no_secret_in(page)
    after = path.read_text(encoding="utf-8")
    lost, gained = removed_and_added(before, after)
    assert lost == [] and "[[openai.accounts]]" in gained
    added = tomlkit.parse(after)["openai"]["accounts"][1]  # type: ignore[index]
    assert dict(added) == {"name": "second", "api_key": NEW_KEY, "api_endpoint": endpoint, "model": "m2"}
    assert account_names(client) == ["main", "second"]
    assert client.app.settings.openai.accounts[1].api_key.get_secret_value() == NEW_KEY
    _, page = await client.get("/config/openai")
    assert 'data-group="openai.accounts[1]"' in page and "[openai.accounts[1]] second" in page
    no_secret_in(page)
    assert NEW_KEY not in page


async def test_an_account_without_a_key_gets_the_loaders_message_and_nothing_is_written(
    console: Callable[..., Any],
) -> None:
    client: ConsoleClient = await console()
    path = config_file(client)
    before = path.read_bytes()
    status, page = await add_account(client, name="nokey", model="m3")
    assert status == 400
    edited = tomlkit.parse(before.decode("utf-8"))
    edited["openai"]["accounts"].append({"name": "nokey", "model": "m3"})  # type: ignore[index, union-attr]
    with pytest.raises(ConfigError) as caught:
        loads_config(tomlkit.dumps(edited), path)
    assert error_for(page, "openai.accounts[1].api_key") == caught.value.one_line()
    assert "缺少必填项" in caught.value.one_line() and 'value="nokey"' in page
    no_secret_in(page)
    assert path.read_bytes() == before and account_names(client) == ["main"]


async def test_an_account_is_removed_but_never_the_last_one(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    path = config_file(client)
    original = path.read_text(encoding="utf-8")
    endpoint = client.app.settings.openai.accounts[0].api_endpoint
    status, _ = await add_account(client, name="second", api_key=NEW_KEY, api_endpoint=endpoint)
    assert status == 200 and account_names(client) == ["main", "second"]
    status, page = await remove(client, "openai", "openai.accounts", "1", confirm="")
    assert status == 400 and "确认删除" in page and account_names(client) == ["main", "second"]
    _, page = await client.get("/config/openai")
    assert 'id="remove-openai.accounts[1]"' in page and "删除 / Remove" in page
    status, page = await remove(client, "openai", "openai.accounts", "1")
    assert status == 200 and "删除了" in page and "配置已重新加载" in page
    no_secret_in(page)
    after = path.read_text(encoding="utf-8")
    assert after == original and NEW_KEY not in after
    assert account_names(client) == ["main"]
    status, page = await remove(client, "openai", "openai.accounts", "0")
    assert status == 400 and "最后一个账号" in page and "\n" not in page.strip()
    assert path.read_text(encoding="utf-8") == original and account_names(client) == ["main"]


async def test_a_second_onebot_connection_turns_the_table_into_an_array(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console({"onebot": {"reverse_ws_host": "127.0.0.1", "reverse_ws_port": free_port()}})
    path = config_file(client)
    before = path.read_text(encoding="utf-8")
    assert "onebot" in client.app.adapters and "[onebot]" in before
    _, page = await client.get("/config/onebot")
    assert "添加连接 / Add a connection" in page and 'id="remove-onebot"' in page
    status, page = await client.get("/config/onebot/new?array=onebot")
    assert status == 200
    port = free_port()
    fields = form_of(page, **{"onebot[1]__reverse_ws_host": "127.0.0.1", "onebot[1]__reverse_ws_port": str(port)})
    status, page = await client.post("/config/onebot/new", fields)
    assert status == 200 and "配置已重新加载" in page
    no_secret_in(page)
    after = path.read_text(encoding="utf-8")
    assert after.count("[[onebot]]") == 2 and not re.search(r"^\[onebot\]", after, re.MULTILINE)
    lost, _ = removed_and_added(before, after)
    assert lost == ["[onebot]"]  # only the header became [[onebot]]
    assert {"mirai", "onebot", "onebot#2"} <= client.app.adapters.keys()
    second = tomlkit.parse(after)["onebot"][1]  # type: ignore[index]
    assert dict(second) == {"reverse_ws_host": "127.0.0.1", "reverse_ws_port": port}
    status, page = await remove(client, "onebot", "onebot", "1")
    assert status == 200 and "onebot#2" not in client.app.adapters and "onebot" in client.app.adapters
    assert path.read_text(encoding="utf-8").count("[[onebot]]") == 1
    status, page = await remove(client, "onebot", "onebot", "0")  # mirai stays enabled: the section goes
    assert status == 200 and "onebot" not in tomlkit.parse(path.read_text(encoding="utf-8"))
    await eventually(lambda: "onebot" not in client.app.adapters)
    assert "mirai" in client.app.adapters


async def test_the_last_platform_connection_is_not_removed(console: Callable[..., Any]) -> None:
    onebot = {"reverse_ws_host": "127.0.0.1", "reverse_ws_port": free_port()}
    client: ConsoleClient = await console({"mirai": {"enable": False}, "onebot": onebot})
    path = config_file(client)
    before = path.read_bytes()
    status, page = await remove(client, "onebot", "onebot", "0")
    assert status == 400 and "没有启用任何聊天平台" in page
    assert path.read_bytes() == before and "onebot" in client.app.adapters


async def test_adding_to_the_commented_example_keeps_every_comment(commented: ConsoleClient) -> None:
    path = config_file(commented)
    before = path.read_text(encoding="utf-8")
    status, page = await add_account(commented, name="second", api_key=NEW_KEY, model="m2")
    assert status == 200 and "配置已重新加载" in page
    after = path.read_text(encoding="utf-8")
    lost, gained = removed_and_added(before, after)
    assert lost == [] and [line for line in gained if line] == [
        "[[openai.accounts]]",
        'name = "second"',
        f'api_key = "{NEW_KEY}"',
        'model = "m2"',
    ]
    assert after.index('name = "second"') < after.index("# 更多服务商示例")  # the commented examples follow it
    status, _ = await remove(commented, "openai", "openai.accounts", "1")
    assert status == 200 and path.read_text(encoding="utf-8") == before


async def test_bad_entry_requests_get_4xx(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    path = config_file(client)
    before = path.read_bytes()
    for entry, array in (("x", "openai.accounts"), ("-1", "openai.accounts"), ("7", "openai.accounts"), ("0", "no")):
        status, page = await remove(client, "openai", array, entry)
        assert status == 400, (entry, array)
        assert "\n" not in page.strip()
    status, _ = await client.get("/config/response/new")
    assert status == 400
    status, _ = await client.post("/config/response/new", {"response.reset": "x"})
    assert status == 400
    status, _ = await client.get("/config/nosuch/new")
    assert status == 404
    status, _ = await client.post("/config/nosuch/remove", {"entry": "0", "confirm": "yes"})
    assert status == 404
    status, _ = await client.post("/config/mirai/remove", {"array": "mirai", "entry": "3", "confirm": "yes"})
    assert status == 400
    _, page = await client.get("/config/openai/new")
    stale = form_of(page, **{"openai__accounts[1]__api_key": NEW_KEY, "file_version": "0" * 64})
    status, page = await client.post("/config/openai/new", stale)
    assert status == 409 and "被修改过" in page and NEW_KEY not in page
    assert path.read_bytes() == before


async def test_entry_routes_need_a_login_and_the_csrf_token(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console(login=False)
    async with client.http.get(client.base + "/config/openai/new", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"].startswith("/login")
    for route in ("/config/openai/new", "/config/openai/remove"):
        status, _ = await client.post(route, {"array": "openai.accounts", "entry": "0", "confirm": "yes"})
        assert status in (401, 403), route
    await client.login()
    path = config_file(client)
    before = path.read_bytes()
    for route in ("/config/openai/new", "/config/openai/remove"):
        status, _ = await client.post(route, {"array": "openai.accounts", "entry": "0", "confirm": "yes"}, csrf=False)
        assert status == 403, route
    assert path.read_bytes() == before


def test_a_single_table_keeps_its_comments_when_it_becomes_an_array() -> None:
    text = (
        "[[openai.accounts]]\napi_key = 'sk-x'\n\n# before onebot\n[onebot]  # the LLBot one\n"
        "# forward WebSocket\nws_url = 'ws://a'  # LLBot\n\n# before web\n[web]\nport = 1\n"
    )
    document = tomlkit.parse(text)
    array = find_array("onebot", None)
    assert array is not None
    form = new_entry_form("onebot", array, document)
    assert add_entry(form, array, {"onebot[1].ws_url": ["ws://b"]}, document) == 1
    after = tomlkit.dumps(document)
    assert after == text.replace("[onebot]", "[[onebot]]").replace(
        "# before web", '[[onebot]]\nws_url = "ws://b"\n\n# before web'
    )
    remove_entry(array, 1, document)
    assert tomlkit.dumps(document) == text.replace("[onebot]", "[[onebot]]")
    remove_entry(array, 0, document)
    assert tomlkit.dumps(document) == (
        "[[openai.accounts]]\napi_key = 'sk-x'\n\n# before onebot\n\n# before web\n[web]\nport = 1\n"
    )


def test_an_optional_yes_no_setting_has_three_states() -> None:
    document = tomlkit.parse("[database]\nurl = 'sqlite+aiosqlite:///x.db'\n")
    form = section_form("database", document)
    shared = next(f for f in form.fields() if f.key == "database.shared")
    assert shared.kind == "choice" and shared.choices == ("true", "false") and shared.text == ""
    assert apply_form(form, {shared.key: ["true"]}, document) == 1
    assert tomlkit.dumps(document).endswith("shared = true\n")
    form = section_form("database", document)
    shared = next(f for f in form.fields() if f.key == "database.shared")
    assert shared.text == "true"
    assert apply_form(form, {shared.key: [""]}, document) == 1  # back to "not set": the key goes
    assert "shared" not in tomlkit.dumps(document)
