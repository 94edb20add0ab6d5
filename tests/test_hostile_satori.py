"""Hostile input and peer faults through Satori's real WebSocket link against a fake Satori server."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.frames import MAX_FRAME
from adapters.link import LinkState, LinkStatus
from adapters.satori import adapter as satori_adapter
from tests.conftest import eventually, start_bot
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.satori_server import FakeSatori
from tests.hostile import fail_once, generic_frames, wrong_types

BOT = "10004"
TOKEN = "satori-token-Qw3"
USER, MEMBER, GROUP = "20001", "20002", "30001"
GARBAGE_TEXT = "坏消息"


class Bot:
    """A bot on a Satori link and the fake server it talks to."""

    def __init__(self, app: Any, server: FakeSatori) -> None:
        self.app = app
        self.server = server
        self.ids = 5000

    @property
    def adapter(self) -> Any:
        return self.app.adapters["satori"]

    def creates(self) -> list[dict[str, Any]]:
        return [c for c in self.server.calls if c["api"] == "message.create"]

    async def answered(self, words: str) -> None:
        """A normal private message gets its answer."""
        self.ids += 1
        await self.server.push(self.server.message_event(f"private:{USER}", USER, words, str(self.ids)))
        await eventually(lambda: any(c["body"]["content"] == f"echo: {words}" for c in self.creates()), timeout=10)

    def assert_same_connection(self, accepted: int) -> None:
        """No reconnect happened and the link is still up."""
        assert [status.state for status in self.adapter.links] == [LinkState.UP]
        assert self.server.accepted == accepted and self.server.connections == 1


def reconnected(bot: Bot, before: int) -> bool:
    """The link dialled a new connection since `before` connections, and is up on it."""
    return bot.server.accepted > before and bot.server.connections == 1


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(satori_adapter, "RECONNECT_MIN_DELAY", 0.05)
    monkeypatch.setattr(satori_adapter, "RECONNECT_MAX_DELAY", 0.2)


@pytest.fixture
def transitions(monkeypatch: pytest.MonkeyPatch) -> list[LinkState]:
    """Every state change of the link, in order."""
    seen: list[LinkState] = []
    original = LinkStatus.set

    def record(self: LinkStatus, state: LinkState, reason: str = "") -> None:
        if state is not self.state:
            seen.append(state)
        original(self, state, reason)

    monkeypatch.setattr(LinkStatus, "set", record)
    return seen


@pytest.fixture
async def satori(write_config: Callable[..., Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Bot] = []

    async def start(
        token: str = TOKEN,
        ready_body: Any = None,
        section: dict[str, Any] | None = None,
        refuse_upgrade: int | None = None,
    ) -> Bot:
        server = FakeSatori(BOT, token=TOKEN)
        server.ready_body = ready_body
        server.refuse_upgrade = refuse_upgrade
        url = await server.start()
        extra = {"system": {"accept_friend_request": True}}
        config = {"mirai": None, "satori": {"url": url, "token": token, **(section or {})}, **extra}
        bot = Bot(await start_bot(write_config(config)), server)
        started.append(bot)
        if token == TOKEN and refuse_upgrade is None:
            await eventually(lambda: bot.adapter.connected and server.connections == 1, timeout=10)
        return bot

    yield start
    for bot in started:
        await bot.app.stop()
        await bot.server.stop()


def contents(fake_llm: FakeOpenAI) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in fake_llm.requests]


# --- the generic corpus ---------------------------------------------------------------------------


async def test_generic_frames_are_dropped_and_the_link_stays(satori: Any, fake_llm: FakeOpenAI) -> None:
    bot = await satori()
    normals: list[str] = []
    for name, frame in generic_frames(MAX_FRAME):
        accepted = bot.server.accepted
        await bot.server.push_raw(frame)
        if isinstance(frame, bytes):
            await bot.server.push_raw(frame, binary=True)
        if name == "over the size cap":
            # aiohttp closes a WebSocket with 1009 on a frame over max_msg_size before the bot sees it:
            # the one frame that costs the connection. The link redials and resumes at once.
            await eventually(functools.partial(reconnected, bot, accepted), timeout=10)
            await eventually(lambda: bot.adapter.connected, timeout=10)
            accepted = bot.server.accepted
        words = f"还在 {len(normals)}"
        await bot.answered(words)
        normals.append(words)
        bot.assert_same_connection(accepted)
    assert contents(fake_llm) == normals


# --- wrong types in every field of every signal ---------------------------------------------------


def _signals(server: FakeSatori) -> dict[str, dict[str, Any]]:
    """One real signal of each kind the adapter handles; events carry sn 1, below anything the server sent."""

    def event(body: dict[str, Any]) -> dict[str, Any]:
        return {"op": 0, "body": {**body, "sn": 1}}

    return {
        "private message": event(server.message_event(f"private:{USER}", USER, GARBAGE_TEXT, "m501")),
        "group message": event(
            server.message_event(GROUP, MEMBER, f'<at id="{BOT}"/>{GARBAGE_TEXT}', "m502", guild_id=GROUP)
        ),
        "friend request": event(server.friend_request(MEMBER, "req-1", "加个好友")),
        "guild request": event(server.guild_request(GROUP, MEMBER, "req-2")),
        "ready": {"op": 4, "body": {"logins": [server.login()], "proxy_urls": []}},
        "pong": {"op": 2, "body": {}},
        "meta": {"op": 5, "body": {"proxy_urls": ["https://example.com/"]}},
    }


def _legitimate(kind: str) -> Callable[[dict[str, Any]], bool]:
    """What the bot may do with a variant of `kind`: only ever the same as with the original signal."""
    if kind == "friend request":
        return lambda c: (
            c["api"] == "friend.approve"
            and c["body"]
            == {
                "message_id": "req-1",
                "approve": True,
                "comment": "",
            }
        )
    if kind == "guild request":
        return lambda c: c["api"] == "guild.approve" and c["body"]["message_id"] == "req-2"
    return lambda c: False  # messages: every valid variant repeats the original's id, so it is a duplicate


def _cases() -> Iterator[str]:
    yield from _signals(FakeSatori(BOT))


@pytest.mark.parametrize("kind", list(_cases()))
async def test_wrong_types_in_every_field_reach_nothing(satori: Any, kind: str, fake_llm: FakeOpenAI) -> None:
    bot = await satori()
    server = bot.server
    signal = _signals(server)[kind]
    # The original first: it is handled (so the variants test a path that works) and, for messages,
    # answered once; every variant that still decodes is then that same message again.
    await server.push_raw(json.dumps(signal))
    if kind.endswith("message"):
        await eventually(lambda: any(GARBAGE_TEXT in c["body"]["content"] for c in bot.creates()), timeout=10)
    elif kind.endswith("request"):
        await eventually(lambda: any(c["api"].endswith(".approve") for c in server.calls), timeout=10)
    requests, calls, accepted = len(fake_llm.requests), len(server.calls), server.accepted
    for _, variant in wrong_types(signal):
        await server.push_raw(json.dumps(variant))
    await bot.answered("正常")
    bot.assert_same_connection(accepted)
    assert contents(fake_llm)[requests:] == ["正常"]
    legitimate = _legitimate(kind)
    during = [c for c in server.calls[calls:] if c["body"].get("content") != "echo: 正常"]
    assert all(legitimate(c) for c in during), [c for c in during if not legitimate(c)][:3]
    # Neither READY variants nor events with odd sn values moved what the link knows.
    assert (bot.adapter.self_id, bot.adapter.platform) == (BOT, "llonebot")
    assert bot.adapter.sn == server.sn


# --- a READY the bot cannot understand ------------------------------------------------------------

BROKEN_READY = {
    "logins a number": {"logins": 5, "proxy_urls": []},
    "logins of strings": {"logins": ["10004", "llonebot"]},
    "user not an object": {"logins": [{"platform": "llonebot", "user": "10004"}]},
    "ids of wrong types": {"logins": [{"platform": 7, "user": {"id": 10004, "name": ["x"]}}]},
    "body a string": "ready",
    "body empty": {},
}


@pytest.mark.parametrize("body", BROKEN_READY.values(), ids=BROKEN_READY.keys())
async def test_a_broken_ready_still_means_connected_with_the_configured_login(satori: Any, body: Any) -> None:
    bot = await satori(ready_body=body, section={"platform": "llonebot", "self_id": BOT})
    await bot.answered("配置里的账号")
    # The API calls carried the configured login: the fake refuses any other with 403.
    assert bot.server.refused == 0
    bot.assert_same_connection(1)


async def test_a_broken_ready_without_config_learns_the_login_from_events(satori: Any, log_lines: list[str]) -> None:
    bot = await satori(ready_body={"logins": 5})
    assert (bot.adapter.self_id, bot.adapter.platform) == ("", "")
    assert any("READY named no usable login" in line for line in log_lines)
    await bot.answered("从事件里学")
    assert (bot.adapter.self_id, bot.adapter.platform) == (BOT, "llonebot")
    bot.assert_same_connection(1)


# --- a bug in one handler ---------------------------------------------------------------------------


async def test_a_handler_bug_costs_one_event_not_the_link(
    satori: Any, fake_llm: FakeOpenAI, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await satori()
    adapter = bot.adapter
    fail_once(monkeypatch, adapter, "on_event")
    await bot.server.push(bot.server.message_event(f"private:{USER}", USER, "触发故障", "m900"))
    await eventually(lambda: any("could not be handled" in line for line in log_lines), timeout=10)
    await bot.answered("故障之后")
    bot.assert_same_connection(1)
    assert contents(fake_llm) == ["故障之后"]
    assert any("op=0" in line for line in log_lines if "could not be handled" in line)


# --- peer faults ------------------------------------------------------------------------------------


async def test_peer_drops_then_answers_garbage_and_the_link_resumes(
    satori: Any, transitions: list[LinkState], fake_llm: FakeOpenAI
) -> None:
    bot = await satori()
    await bot.answered("第一条")
    last_sn = bot.adapter.sn
    transitions.clear()
    # An error page, then a 200 that is not a WebSocket upgrade, then the real thing.
    bot.server.upgrade_failures = [500, 200]
    await bot.server.drop()
    missed = await bot.server.push(bot.server.message_event(f"private:{USER}", USER, "断线期间", "m600"))
    await eventually(lambda: bot.adapter.connected and bot.server.connections == 1, timeout=10)
    assert transitions[0] is LinkState.DOWN and transitions[-1] is LinkState.UP
    assert transitions.count(LinkState.DOWN) == 3 and LinkState.STOPPED not in transitions
    await eventually(lambda: any(c["body"]["content"] == "echo: 断线期间" for c in bot.creates()), timeout=10)
    assert bot.server.identifies[-1].get("sn") == last_sn and bot.adapter.sn >= missed
    await bot.answered("恢复了")


async def test_pings_come_from_the_live_connection_only(satori: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(satori_adapter, "PING_SECONDS", 0.05)
    bot = await satori()
    for _ in range(3):
        await bot.server.drop()
        await eventually(lambda: bot.adapter.connected and bot.server.connections == 1, timeout=10)
    pings = bot.server.pings
    await eventually(lambda: bot.server.pings >= pings + 3, timeout=10)
    # The keep-alive runs inside the connection's own read loop: no task is left behind by a reconnect.
    assert not [t for t in asyncio.all_tasks() if "ping" in t.get_name()]


@pytest.mark.parametrize(("refusal", "said"), [("token", "close 4004"), ("upgrade", "HTTP 401")])
async def test_a_refused_token_stops_the_platform_with_one_line(
    satori: Any, refusal: str, said: str, log_lines: list[str]
) -> None:
    secret = "wrong-token-Xy7"
    bot = await satori(token=secret) if refusal == "token" else await satori(refuse_upgrade=401)
    await asyncio.wait_for(bot.app.all_stopped.wait(), timeout=10)
    [status] = bot.adapter.links
    assert status.state is LinkState.STOPPED and said in status.reason and "[satori] token" in status.reason
    assert "[satori] token" in bot.app.stopped_reason and not bot.adapter.connected
    stopped = [line for line in log_lines if "stopped:" in line]
    assert len(stopped) == 1 and "[satori] token" in stopped[0]
    assert not any(secret in line or TOKEN in line for line in log_lines)
