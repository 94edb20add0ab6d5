"""--backup, --export-history, --import-history: `python bot.py` for the command line, direct calls for the rest."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from storage.admin import AdminStore
from storage.backup import dump_database, shown_url
from storage.base import RESET_ROLE
from storage.models import messages
from storage.store import SqlHistoryStore
from storage.transfer import HISTORY_FORMAT, BadLine, history_records, import_history, jsonl
from tests.conftest import free_port, spawn_bot

pytest_plugins = ("tests.dbservers",)

BUDGETS = (10, 60, 100_000)  # small budgets cut windows mid-history: the ids' order must hold there too


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def run_bot(config: Path, *args: str) -> tuple[int, str, str]:
    """Run `python bot.py --config <config> <args>` to its end: exit code, stdout, stderr."""
    process = await spawn_bot(config, *args)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def config_for(write_config: Callable[..., Path], url: str, name: str) -> Path:
    return write_config({"database": {"url": url}}, name=name)


async def fill(store: SqlHistoryStore) -> dict[str, str]:
    """Sessions with resets, rollbacks and settings, interleaved so that their ids mix."""
    keys = {"private": "qq:private:1001", "member": "qq:group:2002:1001", "group": "qq:group:3003", "web": "web:x"}
    for i in range(30):
        for key in keys.values():
            await store.append_exchange(key, f"问题 {key} {i} " + "字" * (i % 7), f"回答 {i}", now=1_700_000_000.0 + i)
        if i in (9, 20):
            await store.reset(keys["private"])
        if i == 15:
            assert await store.rollback(keys["member"])
            await store.reset(keys["group"])
    await store.rollback(keys["private"])
    await store.update_session(keys["private"], preset="猫娘", model="m2", account="second", reply_mode="image")
    await store.update_session(keys["member"], preset="default", voice="zh-CN-XiaoxiaoNeural")
    await store.update_session(keys["group"], voice="off")
    await store.reset(keys["web"])  # a reset as the newest row: the window is empty
    return keys


async def snapshot(store: SqlHistoryStore, keys: list[str]) -> dict[str, Any]:
    """What a user of the store sees: windows at several budgets and the settings, per session."""
    seen: dict[str, Any] = {}
    for key in keys:
        state = await store.get_session(key)
        settings = (state.preset, state.model, state.account, state.reply_mode, state.voice)
        seen[key] = ([await store.window(key, budget) for budget in BUDGETS], settings)
    return seen


async def roles(store: SqlHistoryStore, key: str) -> list[tuple[str, bool]]:
    async with store.engine.connect() as conn:
        query = select(messages.c.role, messages.c.hidden).where(messages.c.session_key == key).order_by(messages.c.id)
        return [(row[0], bool(row[1])) for row in (await conn.execute(query)).all()]


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- backup -----------------------------------------------------------------------------------------


async def test_backup_of_a_live_sqlite_database_is_a_consistent_copy(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    database = tmp_path / "live.sqlite3"
    config = config_for(write_config, sqlite_url(database), "live.toml")
    store = await SqlHistoryStore.open(sqlite_url(database))  # another process's view: its own connections
    written = 0
    stop = asyncio.Event()

    async def keep_writing() -> None:
        nonlocal written
        while not stop.is_set():
            await store.append_exchange(f"qq:private:{written % 5}", f"q{written}", f"a{written}")
            written += 1
            await asyncio.sleep(0)

    try:
        for i in range(200):
            await store.append_exchange(f"qq:private:{i % 5}", f"seed{i}", "x" * 500)
        writer = asyncio.ensure_future(keep_writing())
        copy = tmp_path / "copy.sqlite3"
        code, out, err = await run_bot(config, "--backup", str(copy))
        during = written
        stop.set()
        await writer
    finally:
        stop.set()
        await store.close()
    assert code == 0, err
    assert during > 0, "the writer must have written while the backup ran"
    [line] = out.strip().splitlines()
    assert str(copy) in line and "rows" in line and "bytes" in line
    with sqlite3.connect(copy) as copied, sqlite3.connect(database) as source:
        assert copied.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copied_rows = copied.execute("SELECT * FROM messages ORDER BY id").fetchall()
        top = copied_rows[-1][0]
        assert 400 <= len(copied_rows) <= 400 + 2 * written
        # A snapshot: exactly the source's rows up to the newest one copied, nothing torn.
        assert copied_rows == source.execute("SELECT * FROM messages WHERE id <= ? ORDER BY id", (top,)).fetchall()
        assert copied.execute("SELECT count(*) FROM sessions").fetchone() == (5,)

    code, out, err = await run_bot(config, "--backup", str(copy))  # never overwrites
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "already exists" in err


# --- export and import ------------------------------------------------------------------------------


async def test_export_then_import_gives_the_same_windows_and_settings(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    source_url, target_url = sqlite_url(tmp_path / "source.sqlite3"), sqlite_url(tmp_path / "target.sqlite3")
    source = await SqlHistoryStore.open(source_url)
    keys = list((await fill(source)).values())
    expected = await snapshot(source, keys)
    expected_roles = {key: await roles(source, key) for key in keys}
    await source.close()
    target = await SqlHistoryStore.open(target_url)
    for i in range(7):  # rows already here, so every imported id differs from its source id
        await target.append_exchange("qq:private:9", f"here {i}", "ok")
    await target.close()

    export = tmp_path / "history.jsonl"
    code, out, err = await run_bot(config_for(write_config, source_url, "source.toml"), "--export-history", str(export))
    assert code == 0, err
    assert "4 sessions" in out and f"{sum(map(len, expected_roles.values()))} messages" in out
    records = lines_of(export)
    assert records[0]["kind"] == "header" and records[0]["format"] == HISTORY_FORMAT and records[0]["version"] == 1
    assert [r["kind"] for r in records[1:5]] == ["session"] * 4
    ids = [r["id"] for r in records[5:]]
    assert ids == sorted(ids) and {r["kind"] for r in records[5:]} == {"message"}
    assert any(r["role"] == RESET_ROLE and r["hidden"] for r in records[5:])
    assert all(r["created_at"].endswith("+00:00") and isinstance(r["created_at_unix"], float) for r in records[5:])

    target_config = config_for(write_config, target_url, "target.toml")
    code, out, err = await run_bot(target_config, "--import-history", str(export))
    assert code == 0, err
    assert "imported 4 sessions" in out and "skipped 0 sessions" in out
    target = await SqlHistoryStore.open(target_url)
    try:
        assert await snapshot(target, keys) == expected
        assert {key: await roles(target, key) for key in keys} == expected_roles  # resets and rollbacks included
        code, out, err = await run_bot(target_config, "--import-history", str(export))
        assert code == 0, err
        assert "imported 0 sessions" in out and "skipped 4 sessions" in out
        assert await snapshot(target, keys) == expected  # nothing doubled
        assert await target.window("qq:private:9", 1000) != []  # and the rows that were there stay
    finally:
        await target.close()


async def test_export_reads_in_pages_and_one_session_alone(tmp_path: Path) -> None:
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "paged.sqlite3"))
    try:
        keys = await fill(store)
        pages = [page async for page in history_records(store.engine, "test", page=7)]
        assert max(len(page) for page in pages) == 7
        records = [record for page in pages for record in page]
        async with store.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(messages))).scalar()
        assert sum(r["kind"] == "message" for r in records) == total
        one = [r async for page in history_records(store.engine, "t", session_key=keys["member"], page=5) for r in page]
        assert {r.get("session_key") for r in one[1:]} == {keys["member"]}
        assert one[1]["kind"] == "session" and one[1]["preset"] == "default"
        assert one[1]["voice"] == "zh-CN-XiaoxiaoNeural"
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not JSON"),
        ('["a list"]', "not a JSON object"),
        ('{"kind": "nonsense"}', "unknown kind"),
        (
            '{"kind": "message", "session_key": "k", "id": 9, "role": "user", "tokens": 1, "hidden": false,'
            ' "created_at_unix": 1.0}',
            "content",
        ),
        (
            '{"kind": "message", "session_key": "k", "id": 9, "role": "robot", "content": "", "tokens": 1,'
            ' "hidden": false, "created_at_unix": 1.0}',
            "unknown role",
        ),
        (
            '{"kind": "message", "session_key": "k", "id": 1, "role": "user", "content": "", "tokens": 1,'
            ' "hidden": false, "created_at_unix": 1.0}',
            "must increase",
        ),
        (
            '{"kind": "session", "session_key": "k", "preset": "", "model": "", "account": "", "reply_mode": "",'
            ' "cleared_before": -1, "updated_at_unix": 0}',
            "cleared_before",
        ),
        (
            '{"kind": "session", "session_key": "k", "preset": "", "model": "", "account": "", "reply_mode": "",'
            ' "voice": "' + "v" * 256 + '", "cleared_before": 0, "updated_at_unix": 0}',
            "voice is longer than 255",
        ),
        (
            '{"kind": "session", "session_key": "k", "preset": "", "model": "", "account": "", "reply_mode": "",'
            ' "voice": 7, "cleared_before": 0, "updated_at_unix": 0}',
            "voice must be a string",
        ),
    ],
)
async def test_a_bad_line_is_refused_with_its_number_and_nothing_is_written(
    tmp_path: Path, line: str, reason: str
) -> None:
    good = {"kind": "message", "session_key": "qq:private:1", "role": "user", "content": "hi", "tokens": 1}
    rows = [good | {"id": i, "hidden": False, "created_at_unix": 1.0} for i in (1, 2)]
    header = {"kind": "header", "format": HISTORY_FORMAT, "version": 1}
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(jsonl(r) for r in (header, *rows)) + line + "\n", encoding="utf-8")
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "bad.sqlite3"))
    try:
        with pytest.raises(BadLine) as refused:
            await import_history(store.engine, path)
        assert refused.value.line == 4 and reason in str(refused.value)
        assert await store.window("qq:private:1", 1000) == []
    finally:
        await store.close()


async def test_a_file_written_before_the_voice_setting_imports_with_the_configured_voice(tmp_path: Path) -> None:
    # A session line (and a dump's sessions row) as schema revision 0001 wrote them: no "voice" key.
    old = {"session_key": "qq:private:1", "preset": "猫娘", "model": "m", "account": "", "reply_mode": "image"}
    history = tmp_path / "old-history.jsonl"
    history.write_text(
        jsonl({"kind": "header", "format": HISTORY_FORMAT, "version": 1})
        + jsonl({"kind": "session", **old, "cleared_before": 0, "updated_at_unix": 5.0})
        + jsonl(
            {"kind": "message", "session_key": "qq:private:1", "id": 1, "role": "user", "content": "hi"}
            | {"tokens": 1, "hidden": False, "created_at_unix": 5.0}
        ),
        encoding="utf-8",
    )
    dump = tmp_path / "old-dump.jsonl"
    dump.write_text(
        jsonl({"kind": "header", "format": "chatgpt-qq-bot/dump", "version": 1})
        + jsonl(
            {"table": "sessions", "row": old | {"session_key": "qq:group:2", "cleared_before": 0, "updated_at": 5.0}}
        ),
        encoding="utf-8",
    )
    store = await SqlHistoryStore.open(sqlite_url(tmp_path / "new.sqlite3"))
    try:
        for path in (history, dump):
            assert (await import_history(store.engine, path)).sessions == 1
        for key in ("qq:private:1", "qq:group:2"):
            state = await store.get_session(key)
            assert (state.preset, state.reply_mode, state.voice) == ("猫娘", "image", "")
    finally:
        await store.close()


async def test_the_command_line_names_the_bad_line(write_config: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "wrong.jsonl"
    path.write_text('{"format": "something else", "version": 1}\n', encoding="utf-8")
    code, out, err = await run_bot(write_config(), "--import-history", str(path))
    assert code == 2 and not out
    [line] = [line for line in err.splitlines() if "line 1" in line]
    assert "invalid" in line and "Traceback" not in err


# --- the dump (other databases), restored by --import-history -----------------------------------------


async def test_a_dump_restores_history_settings_and_admin_tables(tmp_path: Path) -> None:
    source = await SqlHistoryStore.open(sqlite_url(tmp_path / "dumped.sqlite3"), driver_fast_path=False)
    admin = AdminStore(source.engine)
    keys = list((await fill(source)).values())
    await admin.set_limit("user", "default", 20)
    await admin.block("group", "3003")
    expected = await snapshot(source, keys)
    dump = tmp_path / "dump.jsonl"
    try:
        result = await dump_database(source.engine, dump, "test source")
    finally:
        await admin.close()
        await source.close()
    records = lines_of(dump)
    assert records[0]["format"] == "chatgpt-qq-bot/dump" and result.rows == len(records) - 1
    assert {"messages", "sessions", "rate_limits", "blacklist"} <= {r["table"] for r in records[1:]}

    target = await SqlHistoryStore.open(sqlite_url(tmp_path / "restored.sqlite3"))
    try:
        imported = await import_history(target.engine, dump)
        assert imported.sessions == 4 and imported.tables == {"blacklist": 1, "rate_limits": 1}
        assert await snapshot(target, keys) == expected
        restored = AdminStore(target.engine)
        await restored.load()
        assert restored.is_blocked("1", "3003")
        await restored.close()
    finally:
        await target.close()


# --- PostgreSQL and MariaDB (real servers from tests/dbservers.py) -----------------------------------------


@pytest.mark.parametrize("server_fixture", ["postgres_server", "mariadb_server"])
async def test_dump_and_export_move_history_between_real_servers(
    request: pytest.FixtureRequest, write_config: Callable[..., Path], tmp_path: Path, server_fixture: str
) -> None:
    server = request.getfixturevalue(server_fixture)  # tests.dbservers.DatabaseServer
    names = [f"test_backup_{os.getpid()}_{what}" for what in ("source", "from_dump", "from_export")]
    source_url, dump_target, export_target = (server.create_database(name) for name in names)
    password = make_url(source_url).password
    assert password
    try:
        source = await SqlHistoryStore.open(source_url)
        admin = AdminStore(source.engine)
        keys = list((await fill(source)).values())
        await admin.block("user", "666")
        expected = await snapshot(source, keys)
        await admin.close()
        await source.close()
        config = config_for(write_config, source_url, "server.toml")
        dump, export = tmp_path / "dump.jsonl", tmp_path / "export.jsonl"
        outputs = []
        for option, path in (("--backup", dump), ("--export-history", export)):
            code, out, err = await run_bot(config, option, str(path))
            assert code == 0, err
            outputs.append(out + err)
        assert lines_of(dump)[0]["format"] == "chatgpt-qq-bot/dump"
        for url, path in ((dump_target, dump), (export_target, export)):
            code, out, err = await run_bot(config_for(write_config, url, "target.toml"), "--import-history", str(path))
            assert code == 0, err
            outputs.append(out + err)
            target = await SqlHistoryStore.open(url)
            try:
                assert await snapshot(target, keys) == expected
                await target.append_exchange("qq:private:1001", "之后", "照常")  # new ids follow the imported ones
            finally:
                await target.close()
        assert "restored blacklist 1" in outputs[2]
        for text in [*outputs, dump.read_text(encoding="utf-8"), export.read_text(encoding="utf-8")]:
            assert password not in text
    finally:
        for name in names:
            server.drop_database(name)


# --- secrets --------------------------------------------------------------------------------------------


async def test_no_database_password_in_any_output(write_config: Callable[..., Path], tmp_path: Path) -> None:
    password = "pw-must-not-show-9f3a"
    url = f"postgresql+asyncpg://bot:{password}@127.0.0.1:{free_port()}/bot"  # nothing listens there
    config = config_for(write_config, url, "pg.toml")
    existing = tmp_path / "in.jsonl"
    existing.write_text(jsonl({"kind": "header", "format": HISTORY_FORMAT, "version": 1}), encoding="utf-8")
    for option, path in (("--backup", "out.db"), ("--export-history", "out.jsonl"), ("--import-history", existing)):
        code, out, err = await run_bot(config, option, str(tmp_path / path))
        assert code == 2 and password not in out + err
        assert "127.0.0.1" in err and len([line for line in err.splitlines() if "database" in line]) >= 1
    assert password not in shown_url(url) and "***" in shown_url(url)
