"""What differs between databases, checked on real ones: the console's queries (LIKE escaping, case,
paging) and the URL handling of MySQL/MariaDB. The store contracts themselves run on every backend in
test_history_store.py, test_admin_store.py and test_seen_events.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from loguru import logger
from sqlalchemy import text

from storage.browse import HistoryBrowser, SessionCursor
from storage.models import Base
from storage.store import SqlHistoryStore
from tests import dbservers

pytest_plugins = ("tests.dbservers",)

DATABASES = ["sqlite", "postgresql", "mariadb"]
SERVER_URL_FIXTURES = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param in SERVER_URL_FIXTURES:
        return str(request.getfixturevalue(SERVER_URL_FIXTURES[request.param]))
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.sqlite3'}"


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[SqlHistoryStore]:
    opened = await SqlHistoryStore.open(database_url)
    yield opened
    await opened.close()


async def test_search_matches_wildcards_literally_and_ignores_case(store: SqlHistoryStore) -> None:
    for message in ("100% sure", "100 percent", "a_b", "axb", "back\\slash", "backslash", "Hello World", "猫🐱咪"):
        await store.append_exchange("qq:private:5", message, "ok")
    browser = HistoryBrowser(store.engine)

    async def found(query: str) -> list[str]:
        return [hit.content for hit in (await browser.search(query)).hits]

    assert await found("%") == ["100% sure"]
    assert await found("_") == ["a_b"]
    assert await found("\\") == ["back\\slash"]
    assert await found("hello") == ["Hello World"]
    assert await found("🐱") == ["猫🐱咪"]
    assert await found("no such text") == []


async def test_session_filters_and_cursor_paging(store: SqlHistoryStore) -> None:
    keys = ["qq:private:1001", "qq:group:20_02:1001", "qq:group:2002:1001", "qqbot:private:OpenId9"]
    for key in keys:
        await store.append_exchange(key, "q", "r", now=5000.0)  # tied times: the key orders them
    browser = HistoryBrowser(store.engine)

    only_qq = await browser.sessions(platform="qq")
    assert sorted(summary.key for summary in only_qq.sessions) == sorted(keys[:3])
    by_id = await browser.sessions(id_contains="0_0")  # "_" is no wildcard
    assert [summary.key for summary in by_id.sessions] == ["qq:group:20_02:1001"]
    any_case = await browser.sessions(platform="qqbot", id_contains="openid")
    assert [summary.key for summary in any_case.sessions] == ["qqbot:private:OpenId9"]

    seen: list[str] = []
    cursor: SessionCursor | None = None
    while True:
        page = await browser.sessions(after=cursor, limit=1)
        seen += [summary.key for summary in page.sessions]
        if page.next_cursor is None:
            break
        cursor = SessionCursor.decode(page.next_cursor.encode())
    assert sorted(seen) == sorted(keys) and len(seen) == len(keys)


async def test_history_and_export_read_the_session_exactly(store: SqlHistoryStore) -> None:
    await store.append_exchange("qq:private:Ab", "大写", "one")
    await store.append_exchange("qq:private:ab", "小写", "two")
    browser = HistoryBrowser(store.engine)
    page = await browser.history("qq:private:Ab")
    assert [entry.message.content for entry in page.entries] == ["one", "大写"]
    exported = [row.content async for rows in browser.export("qq:private:ab") for row in rows]
    assert exported == ["小写", "two"]
    summary = await browser.session("qq:private:AB")
    assert summary is None  # no such session: keys compare exactly


@pytest.mark.parametrize("database", ["mariadb"])
async def test_mysql_urls_get_utf8mb4_and_keep_their_password_out_of_logs(
    database: str, request: pytest.FixtureRequest, log_lines: list[str]
) -> None:
    url = str(request.getfixturevalue(SERVER_URL_FIXTURES[database]))
    password = str(request.getfixturevalue("mariadb_server").password)
    store = await SqlHistoryStore.open(url)  # the URL names no charset
    try:
        async with store.engine.connect() as conn:
            charset = (await conn.execute(text("SELECT @@character_set_connection"))).scalar_one()
            tables = (
                await conn.execute(
                    text(
                        "SELECT table_name, table_collation FROM information_schema.tables"
                        " WHERE table_schema = DATABASE()"
                    )
                )
            ).all()
            # The store's own tables; Alembic's version table holds ASCII revision ids only.
            collations = {collation for name, collation in tables if name in Base.metadata.tables}
        assert charset == "utf8mb4"
        assert collations and all(name.startswith("utf8mb4_") for name in collations)  # the server's default: latin1
    finally:
        await store.close()
    logger.complete()
    assert log_lines and not any(password in line for line in log_lines)


def test_missing_servers_skip_here_and_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbservers.shutil, "which", lambda *_args, **_kwargs: None)
    with pytest.raises(dbservers.ServerUnavailable, match="MariaDB is not installed"):
        dbservers.MariadbServer()
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql mariadb-server"):
        dbservers._missing("MariaDB is not installed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs"):
        dbservers._missing("MariaDB is not installed")
