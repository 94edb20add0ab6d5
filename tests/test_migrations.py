"""Schema versions: new databases, databases from before versioning, upgrades, and a newer schema refused."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

import storage.schema
from storage.admin import AdminStore
from storage.base import SessionState, StoredTurn
from storage.errors import DatabaseTooNew
from storage.migrations.baseline import BASELINE_TABLES
from storage.models import Base
from storage.schema import BASELINE, HEAD, SHIPPED_MIGRATIONS
from storage.seen import SqlSeenEvents
from storage.store import SqlHistoryStore
from tests.conftest import spawn_bot

pytest_plugins = ("tests.dbservers",)

SAMPLE = Path(__file__).parent / "samples" / "db" / "version1.sqlite3"
TABLES = ("messages", "sessions", "rate_limits", "usage", "blacklist", "seen_events")
# A revision of the tests' own, after the shipped ones: one column more, and proof that the copy came first.
REVISION_0003 = """
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    database = Path(op.get_bind().engine.url.database)
    assert database.with_name(database.name + ".before-0003.bak").exists(), "upgraded before the copy"
    op.add_column("sessions", sa.Column("note", sa.String(64), server_default="", nullable=False))


def downgrade() -> None:
    raise NotImplementedError
"""


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of ours, in a stable order."""
    with sqlite3.connect(path) as db:
        return {name: sorted(db.execute(f"SELECT * FROM {name}").fetchall(), key=repr) for name in TABLES}


def revisions(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def files(folder: Path) -> list[Path]:
    return list(folder.iterdir())


def copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.before-*"))


async def open_and_close(path: Path) -> None:
    store = await SqlHistoryStore.open(sqlite_url(path))
    await store.close()


async def fill(path: Path) -> None:
    """Rows in every table, written by today's stores."""
    store = await SqlHistoryStore.open(sqlite_url(path))
    admin = AdminStore(store.engine)
    try:
        await store.append_exchange("private:1", "你好", "你好！", now=100.0)
        await store.append_exchange("private:1", "q2", "r2", now=160.0)
        await store.rollback("private:1")
        await store.update_session("private:1", preset="猫娘", reply_mode="image")
        await admin.set_limit("user", "default", 20)
        await admin.record(100.0, ("user", "1"))
        await admin.block("group", "2")
        seen = await SqlSeenEvents.open(store.engine)
        assert await seen.first_time("qqbot:event-1")
    finally:
        await admin.close()
        await store.close()


def schema_differences(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def baseline_differences(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), BASELINE_TABLES))


def migrations_up_to(tmp_path: Path, last: str) -> Path:
    """A copy of the shipped migrations folder without the revisions after `last`."""
    migrations = tmp_path / f"migrations-{last}"
    shutil.copytree(SHIPPED_MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    for script in (migrations / "versions").glob("*.py"):
        if script.name.split("_", 1)[0] > last:
            script.unlink()
    return migrations


def no_alembic(*_: object) -> None:
    raise AssertionError("Alembic was loaded")


async def test_a_new_database_gets_the_newest_revision_and_every_table_without_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    monkeypatch.setattr(storage.schema, "_alembic", no_alembic)  # start-up cost: created from the models
    path = tmp_path / "new.sqlite3"
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        async with store.engine.connect() as conn:
            differences = await conn.run_sync(schema_differences)
    finally:
        await store.close()
    assert revisions(path) == ["0002"]
    assert dump(path) == {name: [] for name in TABLES}
    assert "voice" in columns(path, "sessions")
    # Exactly what the models describe (types, defaults, indexes).
    assert differences == []
    assert copies(path) == []  # nothing to keep a copy of
    assert sum("created the tables (schema revision 0002)" in line for line in log_lines) == 1


async def test_the_migrations_build_exactly_what_the_models_describe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    # A new database is created from the models and stamped HEAD (no Alembic import); that is right
    # only while running the revisions from nothing gives the same schema. Through Alembic here:
    migrations = tmp_path / "migrations"
    shutil.copytree(SHIPPED_MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(storage.schema, "MIGRATIONS", migrations)  # not the shipped folder: Alembic runs
    path = tmp_path / "migrated.sqlite3"
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        async with store.engine.connect() as conn:
            differences = await conn.run_sync(schema_differences)
    finally:
        await store.close()
    assert revisions(path) == [HEAD] and differences == []
    assert sum("created the tables (schema revision 0002)" in line for line in log_lines) == 1


def test_head_names_the_newest_revision_in_the_migrations_folder() -> None:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SHIPPED_MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_current_head() == HEAD == "0002"
    assert BASELINE == "0001" and [script.revision for script in scripts.walk_revisions()][-1] == BASELINE


async def test_the_frozen_baseline_is_exactly_what_revision_0001_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database from before versioning is fixed up to these tables, stamped 0001 and upgraded.
    monkeypatch.setattr(storage.schema, "MIGRATIONS", migrations_up_to(tmp_path, "0001"))
    path = tmp_path / "at-0001.sqlite3"
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(baseline_differences) == []
    finally:
        await store.close()
    assert revisions(path) == ["0001"] and "voice" not in columns(path, "sessions")


async def test_a_file_at_revision_0001_is_copied_then_upgraded_with_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    monkeypatch.setattr(storage.schema, "MIGRATIONS", migrations_up_to(tmp_path, "0001"))
    path = tmp_path / "bot.sqlite3"
    await fill(path)  # written by today's stores on a 0001 schema, as the previous version left it
    monkeypatch.setattr(storage.schema, "MIGRATIONS", SHIPPED_MIGRATIONS)
    before = dump(path)
    assert all(before.values()) and revisions(path) == ["0001"]
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        state = await store.get_session("private:1")
        assert (state.preset, state.reply_mode, state.voice) == ("猫娘", "image", "")
        await store.update_session("private:1", voice="xiaoxiao")
        assert (await store.get_session("private:1")).voice == "xiaoxiao"
    finally:
        await store.close()
    assert revisions(path) == ["0002"]
    after = dump(path)
    # the same settings; updated_at moved (voice was set), voice came last
    assert [row[:-2] for row in after["sessions"]] == [row[:-1] for row in before["sessions"]]
    assert [row[-1] for row in after["sessions"]] == ["xiaoxiao"]
    assert {name: rows for name, rows in after.items() if name != "sessions"} == {
        name: rows for name, rows in before.items() if name != "sessions"
    }
    [copy] = copies(path)
    assert copy.name == "bot.sqlite3.before-0002.bak"
    assert revisions(copy) == ["0001"] and dump(copy) == before
    assert sum("upgraded the schema from revision 0001 to 0002" in line for line in log_lines) == 1


async def test_a_version_1_file_made_by_the_last_release_opens_upgraded_with_every_row(
    tmp_path: Path, log_lines: list[str]
) -> None:
    # Made by the code of the last commit before schema versions (tests/samples/db/README.md).
    path = tmp_path / "bot.sqlite3"
    shutil.copyfile(SAMPLE, path)
    before = dump(path)
    assert all(before.values())  # every table has rows
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        assert await store.window("private:10001", 1000) == [
            StoredTurn("user", "你好", 6),
            StoredTurn("assistant", "你好！有什么可以帮你？", 15),
        ]
        assert [turn.content for turn in await store.window("group:20002:10001", 1000)] == [
            "after reset",
            "new conversation",
        ]
        state = await store.get_session("private:10001")
        assert (state.preset, state.model, state.reply_mode, state.voice) == ("猫娘", "gpt-4o-mini", "image", "")
    finally:
        await store.close()
    upgraded = {**before, "sessions": [(*row, "") for row in before["sessions"]]}  # voice: follow the config
    assert dump(path) == upgraded
    assert revisions(path) == ["0002"]
    # One copy, of the file as it was, made before the fix-up to 0001 and the upgrade to 0002.
    [copy] = copies(path)
    assert copy.name == "bot.sqlite3.before-0002.bak" and dump(copy) == before
    assert "voice" not in columns(copy, "sessions")
    assert any(f"copied {path} to {copy}" in line for line in log_lines)
    assert sum("is now revision 0001" in line for line in log_lines) == 1
    assert sum("upgraded the schema from revision 0001 to 0002" in line for line in log_lines) == 1
    await open_and_close(path)  # now versioned: nothing more to do
    assert copies(path) == [copy] and dump(path) == upgraded


async def test_a_file_made_by_this_version_opens_again_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    await fill(path)
    before = dump(path)
    assert all(before.values())
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        assert [turn.content for turn in await store.window("private:1", 1000)] == ["你好", "你好！"]
    finally:
        await store.close()
    assert dump(path) == before and revisions(path) == ["0002"] and copies(path) == []


async def test_a_database_from_before_versioning_is_fixed_up_copied_stamped_and_upgraded(
    tmp_path: Path, log_lines: list[str]
) -> None:
    # The sessions table of an earlier release: no reply_mode, no index, no other table.
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE sessions (session_key VARCHAR(255) NOT NULL PRIMARY KEY,"
            " cleared_before INTEGER DEFAULT '0' NOT NULL, preset VARCHAR(255) DEFAULT '' NOT NULL,"
            " model VARCHAR(255) DEFAULT '' NOT NULL, account VARCHAR(255) DEFAULT '' NOT NULL,"
            " updated_at FLOAT DEFAULT '0' NOT NULL)"
        )
        old.execute("INSERT INTO sessions VALUES ('s', 0, 'cat', 'm', 'a', 5.0)")
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        assert await store.get_session("s") == SessionState("s", "cat", "m", "a", 5.0, "", "")
    finally:
        await store.close()
    assert revisions(path) == ["0002"]
    assert set(TABLES) <= {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    # reply_mode added by the fix-up to 0001, then voice by revision 0002
    assert dump(path)["sessions"] == [("s", 0, "cat", "m", "a", 5.0, "", "")]
    [copy] = copies(path)
    assert copy.name == "old.sqlite3.before-0002.bak"
    assert "reply_mode" not in columns(copy, "sessions")  # the file as it was
    assert sqlite3.connect(copy).execute("SELECT preset FROM sessions").fetchall() == [("cat",)]
    assert sum("added column sessions.reply_mode" in line for line in log_lines) == 1
    assert not any("added column sessions.voice" in line for line in log_lines)  # 0002's, not the fix-up's
    assert sum("is now revision 0001" in line for line in log_lines) == 1
    assert sum("upgraded the schema from revision 0001 to 0002" in line for line in log_lines) == 1


async def test_a_database_of_a_newer_version_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite3"
    await fill(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    before = dump(path)
    with pytest.raises(DatabaseTooNew) as raised:
        await SqlHistoryStore.open(sqlite_url(path))
    line = raised.value.one_line()
    assert str(raised.value) == line and "\n" not in line
    assert line.startswith("数据库由更新版本的机器人创建（结构版本 0099，本版本只认识到 0002）")
    assert "database made by a newer version of the bot (schema revision 0099" in line
    assert line.endswith(f"database.url = {sqlite_url(path)}")
    assert dump(path) == before and revisions(path) == ["0099"] and copies(path) == []


async def test_the_password_of_a_server_url_is_not_in_the_refusal() -> None:
    error = DatabaseTooNew("postgresql+asyncpg://bot:***@db/bot", "0099", "0001")
    assert "***" in error.one_line() and error.key == "database.url"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
async def test_the_bot_exits_2_on_a_database_of_a_newer_version(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = tmp_path / "newer.sqlite3"
    await open_and_close(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    process = await spawn_bot(write_config({"database": {"url": sqlite_url(path)}}))
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    log = stderr.decode()
    assert process.returncode == 2, log[-2000:]
    [line] = [line for line in log.splitlines() if line.startswith("数据库由更新版本的机器人创建")]
    assert "schema revision 0099" in line and "database.url" in line
    assert "Traceback" not in log
    assert revisions(path) == ["0099"]


async def test_an_upgrade_copies_the_sqlite_file_first_and_keeps_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    path = tmp_path / "bot.sqlite3"
    await fill(path)
    before = dump(path)
    migrations = tmp_path / "migrations"
    shutil.copytree(SHIPPED_MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "0003_test_note.py").write_text(REVISION_0003, encoding="utf-8")
    monkeypatch.setattr(storage.schema, "MIGRATIONS", migrations)
    store = await SqlHistoryStore.open(sqlite_url(path))
    try:
        assert await store.get_session("private:1") == SessionState(
            "private:1", "猫娘", "", "", before["sessions"][0][-2], "image", ""
        )
    finally:
        await store.close()
    assert revisions(path) == ["0003"]
    assert "note" in columns(path, "sessions")
    after = dump(path)
    assert after["sessions"] == [(*row, "") for row in before["sessions"]]
    assert {name: rows for name, rows in after.items() if name != "sessions"} == {
        name: rows for name, rows in before.items() if name != "sessions"
    }
    [copy] = copies(path)
    assert copy.name == "bot.sqlite3.before-0003.bak"
    assert revisions(copy) == ["0002"] and dump(copy) == before
    assert any("upgraded the schema from revision 0002 to 0003" in line for line in log_lines)
    await open_and_close(path)  # up to date now: no second copy
    assert copies(path) == [copy]


async def test_an_earlier_copy_is_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bot.sqlite3"
    await open_and_close(path)
    with sqlite3.connect(path) as db:
        # Back to "made before versioning", voice column and all: as a first start stopped between
        # creating the tables and recording their version leaves it. Revision 0002 keeps the column.
        db.execute("DROP TABLE alembic_version")
    earlier = tmp_path / "bot.sqlite3.before-0002.bak"
    earlier.write_bytes(b"an earlier copy")
    await open_and_close(path)
    assert earlier.read_bytes() == b"an earlier copy"
    assert copies(path) == [earlier, tmp_path / "bot.sqlite3.before-0002.bak.2"]
    assert revisions(path) == ["0002"] and "voice" in columns(path, "sessions")


async def test_an_up_to_date_database_opens_without_loading_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bot.sqlite3"
    await open_and_close(path)
    monkeypatch.setattr(storage.schema, "_alembic", no_alembic)
    await open_and_close(path)
    assert revisions(path) == ["0002"]


async def test_an_in_memory_database_is_created_without_a_copy(tmp_path: Path) -> None:
    store = await SqlHistoryStore.open("sqlite+aiosqlite://")
    try:
        await store.append_exchange("s", "q", "r")
        assert [turn.content for turn in await store.window("s", 100)] == ["q", "r"]
    finally:
        await store.close()
    assert files(tmp_path) == []


# --- PostgreSQL and MariaDB (real servers from tests/dbservers.py) -----------------------------

SERVERS = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}


@pytest.fixture(params=sorted(SERVERS))
def server_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(SERVERS[request.param])
    return url


async def server_revisions(store: SqlHistoryStore) -> list[str]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


async def test_a_new_server_database_gets_the_newest_revision_matching_the_models(
    server_url: str, log_lines: list[str]
) -> None:
    store = await SqlHistoryStore.open(server_url)
    try:
        await store.append_exchange("s", "q", "r")
        assert await server_revisions(store) == ["0002"]
        async with store.engine.connect() as conn:
            # Types, collations and indexes as the models say (compare_metadata checks types and indexes).
            assert await conn.run_sync(schema_differences) == []
    finally:
        await store.close()
    store = await SqlHistoryStore.open(server_url)  # up to date: opened as it is
    try:
        assert [turn.content for turn in await store.window("s", 100)] == ["q", "r"]
    finally:
        await store.close()
    assert sum("created the tables" in line for line in log_lines) == 1


async def test_several_processes_starting_on_one_new_server_database_create_it_once(server_url: str) -> None:
    # Each store has its own engine and connections, as separate bot processes would.
    stores = await asyncio.gather(*(SqlHistoryStore.open(server_url) for _ in range(4)))
    try:
        assert await server_revisions(stores[0]) == ["0002"]
    finally:
        for store in stores:
            await store.close()


async def test_a_server_database_of_a_newer_version_is_refused(server_url: str) -> None:
    store = await SqlHistoryStore.open(server_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        await store.close()
    with pytest.raises(DatabaseTooNew) as raised:
        await SqlHistoryStore.open(server_url)
    line = raised.value.one_line()
    assert "schema revision 0099" in line and "\n" not in line
    assert ":***@" in line  # the URL is shown without its password


async def test_a_server_database_from_before_versioning_is_stamped_with_rows_kept(
    server_url: str, log_lines: list[str]
) -> None:
    store = await SqlHistoryStore.open(server_url)
    try:
        await store.append_exchange("s", "q", "r")
        async with store.engine.begin() as conn:
            await conn.execute(text("DROP TABLE alembic_version"))  # as the last release left it
    finally:
        await store.close()
    store = await SqlHistoryStore.open(server_url)
    try:
        assert [turn.content for turn in await store.window("s", 100)] == ["q", "r"]
        assert await server_revisions(store) == ["0002"]  # 0002 keeps the voice column it finds
        await store.update_session("s", voice="xiaoxiao")
        assert (await store.get_session("s")).voice == "xiaoxiao"
    finally:
        await store.close()
    assert any("versioning its schema without an automatic copy" in line for line in log_lines)


async def server_dump(store: SqlHistoryStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of ours, in a stable order."""
    found = {}
    async with store.engine.connect() as conn:
        for name in TABLES:
            quoted = conn.dialect.identifier_preparer.quote(name)  # USAGE is a MariaDB keyword
            rows = (await conn.execute(text(f"SELECT * FROM {quoted}"))).all()
            found[name] = sorted((tuple(row) for row in rows), key=repr)
    return found


async def test_a_server_database_at_revision_0001_is_upgraded_with_every_row_kept(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    monkeypatch.setattr(storage.schema, "MIGRATIONS", migrations_up_to(tmp_path, "0001"))
    store = await SqlHistoryStore.open(server_url)  # built by revision 0001 through Alembic
    admin = AdminStore(store.engine)
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(baseline_differences) == []  # the frozen baseline, on this server
        await store.append_exchange("s", "你好 😀", "r", now=100.0)
        await store.update_session("s", preset="猫娘", model="m", account="a", reply_mode="image")
        await admin.set_limit("user", "default", 20)
        await admin.block("group", "2")
        assert await server_revisions(store) == ["0001"]
        before = await server_dump(store)
    finally:
        await admin.close()
        await store.close()
    monkeypatch.setattr(storage.schema, "MIGRATIONS", SHIPPED_MIGRATIONS)
    store = await SqlHistoryStore.open(server_url)
    try:
        assert await server_revisions(store) == ["0002"]
        after = await server_dump(store)
        assert after == {**before, "sessions": [(*row, "") for row in before["sessions"]]}
        async with store.engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []  # upgraded = created new
        state = await store.get_session("s")
        assert (state.preset, state.model, state.account, state.reply_mode, state.voice) == (
            "猫娘",
            "m",
            "a",
            "image",
            "",
        )
    finally:
        await store.close()
    assert sum("upgraded the schema from revision 0001 to 0002" in line for line in log_lines) == 1
