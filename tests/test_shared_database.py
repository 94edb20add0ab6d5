"""Several bot processes on one database (SQLite file and a real PostgreSQL): an event delivered to two of them
is answered once; limits, usage and blacklist are shared."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import conversation.manager as manager_module
from core.config import DatabaseSettings
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, free_port, mirai_url, spawn_bot, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message, group_message, sent_text

pytest_plugins = ("tests.dbservers",)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """One database for every bot of a test: a SQLite file marked shared, or a real PostgreSQL."""
    if request.param == "postgresql":
        return {"url": request.getfixturevalue("postgres_url")}  # shared by default
    return {"url": f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}", "shared": True}


def test_postgres_and_mysql_are_shared_by_default_sqlite_is_not() -> None:
    assert DatabaseSettings(url="postgresql+asyncpg://u@h/db").is_shared
    assert DatabaseSettings(url="mysql+aiomysql://u@h/db").is_shared
    assert not DatabaseSettings().is_shared
    assert (
        DatabaseSettings(shared=True).is_shared and not DatabaseSettings(url="postgresql://h/d", shared=False).is_shared
    )


async def test_an_event_delivered_to_two_processes_is_answered_once(
    write_config: Callable[..., Path], database: dict[str, Any], log_lines: list[str]
) -> None:
    apps = [
        await start_bot(
            write_config({"database": database, "mirai": {"reverse_ws_port": free_port()}}, name=f"{n}.toml")
        )
        for n in range(2)
    ]
    peers = [FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ) for app in apps]
    try:
        for peer in peers:
            await peer.connect()
        # the same message (same account, same id) reaches both processes at once
        await asyncio.gather(*(peer.push(friend_message(20001, "只答一次", 4242)) for peer in peers))
        await eventually(lambda: sum(len(peer.commands) for peer in peers) >= 1)
        # the other process found the id already claimed in the database
        await eventually(lambda: any("dropped a redelivered message 4242" in line for line in log_lines))
        answers = [sent_text(c) for peer in peers for c in peer.commands]
        assert answers == ["echo: 只答一次"]
        # another message is answered too (by whichever process receives it)
        await peers[1].push(friend_message(20001, "下一条", 4243))
        await eventually(lambda: any(sent_text(c) == "echo: 下一条" for c in peers[1].commands))
    finally:
        for peer in peers:
            await peer.close()
        for app in apps:
            await app.stop()


async def test_two_accounts_in_one_group_each_decide_for_themselves(
    write_config: Callable[..., Path], database: dict[str, Any]
) -> None:
    accounts = (BOT_QQ, BOT_QQ + 1)
    apps = [
        await start_bot(
            write_config({"database": database, "mirai": {"qq": qq, "reverse_ws_port": free_port()}}, name=f"{qq}.toml")
        )
        for qq in accounts
    ]
    peers = [FakeMirai(mirai_url(app), VERIFY_KEY, qq) for app, qq in zip(apps, accounts, strict=True)]
    try:
        for peer in peers:
            await peer.connect()
        # one group message with one id, seen by both accounts, @-mentioning the second one
        event: dict[str, Any] = group_message(30001, 20001, "叫的是你", 5151, at=accounts[1])
        await asyncio.gather(*(peer.push(event) for peer in peers))
        await eventually(lambda: len(peers[1].commands) == 1)
        assert sent_text(peers[1].commands[0]) == "echo: 叫的是你" and not peers[0].commands
    finally:
        for peer in peers:
            await peer.close()
        for app in apps:
            await app.stop()


async def test_blacklist_and_limits_set_in_one_process_apply_in_the_other(
    write_config: Callable[..., Path], database: dict[str, Any], monkeypatch: Any
) -> None:
    monkeypatch.setattr(manager_module, "SHARED_REFRESH_SECONDS", 0.1)
    mirai = {"manager_qq": 20099}
    apps = [
        await start_bot(
            write_config({"database": database, "mirai": {**mirai, "reverse_ws_port": free_port()}}, name=f"{n}.toml")
        )
        for n in range(2)
    ]
    first, second = (FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ) for app in apps)
    try:
        await first.connect()
        await second.connect()
        await first.push(friend_message(20099, ".拉黑 20005", 1))
        await eventually(lambda: len(first.commands) == 1)
        await eventually(lambda: apps[1].admin.is_blocked("20005"))
        await first.push(friend_message(20099, ".设置 好友 默认 额度为 0 条/小时", 2))
        await eventually(lambda: len(first.commands) == 2)

        async def limited() -> bool:
            return await apps[1].admin.limit_for("user", "20006") == 0

        for _ in range(100):
            if await limited():
                break
            await asyncio.sleep(0.05)
        await second.push(friend_message(20006, "还能聊吗", 3))
        await eventually(lambda: len(second.commands) == 1)
        assert sent_text(second.commands[0]) == "已达到额度限制，请等待下一小时继续和我对话。"
    finally:
        await first.close()
        await second.close()
        for app in apps:
            await app.stop()


async def test_usage_is_counted_across_processes(write_config: Callable[..., Path], database: dict[str, Any]) -> None:
    mirai = {"manager_qq": 20099}
    apps = [
        await start_bot(
            write_config({"database": database, "mirai": {**mirai, "reverse_ws_port": free_port()}}, name=f"{n}.toml")
        )
        for n in range(2)
    ]
    first, second = (FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ) for app in apps)
    try:
        await first.connect()
        await second.connect()
        await apps[0].admin.set_limit("user", "default", 2)
        await apps[1].admin.load()
        await first.push(friend_message(20007, "一", 11))
        await eventually(lambda: any(sent_text(c) == "echo: 一" for c in first.commands))
        await second.push(friend_message(20007, "二", 12))
        await eventually(lambda: any(sent_text(c) == "echo: 二" for c in second.commands))
        # two messages used, one in each process: the hour's limit of 2 is reached everywhere
        await first.push(friend_message(20007, "三", 13))
        await eventually(lambda: any("已达到额度限制" in sent_text(c) for c in first.commands))
        assert await apps[1].admin.count("user", "20007") == 2
    finally:
        await first.close()
        await second.close()
        for app in apps:
            await app.stop()


async def _drain(stream: asyncio.StreamReader | None) -> None:
    """Read a child's output as it comes, so a full pipe never blocks it."""
    while stream is not None and await stream.readline():
        pass


async def test_two_bot_processes_on_one_postgresql(write_config: Callable[..., Path], postgres_url: str) -> None:
    """Real `python bot.py` processes: a limit and a block set through one apply in the other, usage is
    counted across both, and a message delivered to both is answered once."""
    ports = [free_port(), free_port()]
    configs = [
        write_config(
            {
                "database": {"url": postgres_url},
                "mirai": {"manager_qq": 20099, "reverse_ws_port": port},
                "web": {"enable": False},
            },
            name=f"process-{n}.toml",
        )
        for n, port in enumerate(ports)
    ]
    processes = [await spawn_bot(config) for config in configs]
    drains = [asyncio.ensure_future(_drain(process.stderr)) for process in processes]
    peers = [FakeMirai(f"ws://127.0.0.1:{port}/", VERIFY_KEY, BOT_QQ) for port in ports]
    ids = iter(range(100, 1000))

    async def say(peer: FakeMirai, user: int, text: str, message_id: int | None = None) -> str:
        seen = len(peer.commands)
        await peer.push(friend_message(user, text, message_id or next(ids)))
        await eventually(lambda: len(peer.commands) > seen, timeout=15)
        return sent_text(peer.commands[seen])

    try:
        for peer in peers:
            await peer.connect(timeout=30)
        first, second = peers
        assert await say(first, 20099, ".设置 好友 默认 额度为 2 条/小时") == "已设置好友 默认 的额度为 2 条/小时。"
        # the other process reads limits again every few seconds: a probe user runs into it there
        deadline = asyncio.get_running_loop().time() + 20
        while "已达到额度限制" not in await say(second, 30000, "探测"):
            assert asyncio.get_running_loop().time() < deadline, "the limit never applied in the other process"
            await asyncio.sleep(0.25)  # polling, with the deadline above
        # one message in each process: the hour's 2 are used up in both
        assert await say(first, 20007, "一") == "echo: 一"
        assert await say(second, 20007, "二") == "echo: 二"
        assert "已达到额度限制" in await say(first, 20007, "三")
        # the same message delivered to both processes is answered by one of them
        before = [len(peer.commands) for peer in peers]
        await asyncio.gather(*(peer.push(friend_message(20008, "两边都收到", 7777)) for peer in peers))
        await eventually(lambda: sum(len(p.commands) for p in peers) > sum(before), timeout=15)
        # a later message through each process is answered after that process handled the duplicate
        assert await say(first, 20009, "之后一") == "echo: 之后一"
        assert await say(second, 20009, "之后二") == "echo: 之后二"
        duplicate = [sent_text(c) for p, n in zip(peers, before, strict=True) for c in p.commands[n:]]
        assert duplicate.count("echo: 两边都收到") == 1
        # a user blocked through one process is ignored by the other within a few seconds: each probe is
        # followed by a marker from someone else, whose answer shows the probe was handled first
        assert await say(first, 20099, ".拉黑 20005") == "已拉黑 20005。"
        deadline = asyncio.get_running_loop().time() + 20
        for attempt in itertools.count():
            start, marker = len(second.commands), f"echo: 标记{attempt}"
            await second.push(friend_message(20005, "被拉黑了吗", next(ids)))
            await second.push(friend_message(21000 + attempt, f"标记{attempt}", next(ids)))  # a fresh user
            await eventually(lambda: any(sent_text(c) == marker for c in second.commands[start:]))  # noqa: B023
            if [sent_text(c) for c in second.commands[start:]] == [marker]:
                break  # the probe got no reply at all: ignored
            assert asyncio.get_running_loop().time() < deadline, "the block never applied in the other process"
            await asyncio.sleep(0.25)  # polling, with the deadline above
    finally:
        for peer in peers:
            await peer.close()
        for process in processes:
            if process.returncode is None:
                process.terminate()
        await asyncio.gather(*(process.wait() for process in processes))
        await asyncio.gather(*drains)
