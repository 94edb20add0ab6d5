"""Per-session state is released after each answer: no idle workers, queues or parsed events stay behind."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path

from core.event import MessageEvent
from tests.conftest import BOT_QQ, VERIFY_KEY, mirai_url, start_bot
from tests.fakes.mirai_peer import FakeMirai, friend_message
from tests.fakes.openai_server import FakeOpenAI

SESSIONS = 2000


def session_workers() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("session ")]


def live_message_events() -> int:
    """This test's MessageEvents still alive (other tests' may linger in their tracebacks and logs)."""
    gc.collect()
    first, last = str(100_000), str(100_000 + SESSIONS - 1)
    return sum(
        1
        for thing in gc.get_objects()
        if isinstance(thing, MessageEvent) and len(thing.user_id) == 6 and first <= thing.user_id <= last
    )


async def test_two_thousand_answered_sessions_leave_no_workers_queues_or_events(
    write_config: Callable[..., Path], fake_llm: FakeOpenAI
) -> None:
    fake_llm.record = False  # the fake's own request log would otherwise be what grows
    app = await start_bot(write_config({"conversation": {"max_concurrency": 64}}))
    mirai = FakeMirai(mirai_url(app), VERIFY_KEY, BOT_QQ)
    await mirai.connect()
    try:
        for user in range(SESSIONS):
            await mirai.push(friend_message(100_000 + user, f"问题{user}", user + 1))
        await mirai.wait_commands(SESSIONS, timeout=120)
        assert len({c["content"]["target"] for c in mirai.commands}) == SESSIONS  # one answer per session
        manager = app.manager
        await asyncio.wait_for(manager.drain(), 10)
        assert session_workers() == []
        assert manager._sessions == {} and manager._commands == {}  # nothing per session once its work is done
        assert live_message_events() == 0
    finally:
        await mirai.close()
        await app.stop()
