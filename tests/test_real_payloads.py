"""Recorded public payloads of every protocol (tests/samples/<protocol>/real.json) decode to the right event and text.

Each record names where it came from; every one goes through its protocol's real decoding entry point (the adapter's
event handler, or the codec the QQ adapter dispatches to) and every field its `expect` names is checked. A record
without a complete expectation fails the file check below, so none can slip through unasserted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.milky.adapter import MilkyAdapter
from adapters.milky.settings import MilkySettings
from adapters.mirai.reverse import MiraiReverse
from adapters.mirai.settings import MiraiSettings
from adapters.onebot.settings import OneBotSettings
from adapters.onebot.transports import OneBotReverse
from adapters.qqbot.adapter import QQBotAdapter
from adapters.qqbot.settings import QQBotSettings
from adapters.satori.adapter import SatoriAdapter
from adapters.satori.settings import SatoriSettings
from core.event import ChatType, Event, MessageEvent, NoticeEvent, RequestEvent, Role
from core.message import Image, Quote, Text, Voice, describe

SAMPLES = Path(__file__).parent / "samples"
PROTOCOLS = ("mirai", "onebot", "satori", "milky", "qqbot")
QQBOT_APPID = "102000000"

# What each kind of expectation must state: a record missing one of these is not checked, so it is an error.
REQUIRED = {
    "message": {"chat", "user_id", "group_id", "message_id", "to_me", "text", "segments"},
    "request": {"request", "user_id", "group_id", "comment"},
    "notice": {"notice", "user_id", "group_id"},
    "none": {"why"},
}
CHATS = {"private": ChatType.PRIVATE, "group": ChatType.GROUP, "temp": ChatType.TEMP, "stranger": ChatType.STRANGER}
ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN, "member": Role.MEMBER}


def _load(protocol: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / protocol / "real.json").read_text("utf-8"))
    return data


FILES = {protocol: _load(protocol) for protocol in PROTOCOLS}
CASES = [
    pytest.param(protocol, record, id=f"{protocol}: {record.get('name', '?')}")
    for protocol, data in FILES.items()
    for record in data["events"]
]


# --- the file itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_record_says_where_it_came_from_and_what_it_must_decode_to(protocol: str) -> None:
    data = FILES[protocol]
    assert isinstance(data.get("_about"), str) and data["_about"].strip()
    records = data["events"]
    assert records, f"{protocol}/real.json has no records"
    names = [record.get("name") for record in records]
    assert len(set(names)) == len(names), "record names must be unique"
    for record in records:
        name = record.get("name")
        assert isinstance(name, str) and name.strip(), record
        assert isinstance(record.get("source"), str) and record["source"].strip(), f"{name}: no source"
        assert isinstance(record.get("event"), dict) and record["event"], f"{name}: no event"
        expect = record.get("expect")
        assert isinstance(expect, dict), f"{name}: no expectation"
        kind = expect.get("kind")
        assert kind in REQUIRED, f"{name}: unknown expectation kind {kind!r}"
        missing = REQUIRED[kind] - set(expect)
        assert not missing, f"{name}: the expectation does not state {sorted(missing)}"
    assert any(record["expect"]["kind"] == "message" for record in records)


# --- decoding through each protocol's real entry point ---------------------------------------------


def _bot(data: dict[str, Any], record: dict[str, Any]) -> str:
    """The bot account a record is decoded for: the record's, else the file's (empty: the event says)."""
    return str(record.get("self_id") or data.get("self_id") or "")


async def _mirai(record: dict[str, Any], bot: str, sink: Callable[[Event], Awaitable[None]]) -> None:
    adapter = MiraiReverse("mirai", MiraiSettings(qq=int(bot), api_key="k"), sink)
    await adapter._on_event(record["event"])


async def _onebot(record: dict[str, Any], bot: str, sink: Callable[[Event], Awaitable[None]]) -> None:
    account = bot or str(record["event"]["self_id"])
    adapter = OneBotReverse("onebot", OneBotSettings(qq=int(account)), sink)
    await adapter._on_frame(record["event"])
    # Quoted messages are looked up off the receive path: let those lookups run (nothing is connected, so they
    # fail fast and the bare quote is handed on) before the set is closed.
    lookups = set(adapter.tasks._tasks)
    if lookups:
        await asyncio.wait(lookups, timeout=10)
    await adapter.tasks.close()


async def _satori(record: dict[str, Any], bot: str, sink: Callable[[Event], Awaitable[None]]) -> None:
    adapter = SatoriAdapter("satori", SatoriSettings(), sink)
    adapter.self_id = bot
    await adapter.on_event(record["event"])


async def _milky(record: dict[str, Any], bot: str, sink: Callable[[Event], Awaitable[None]]) -> None:
    adapter = MilkyAdapter("milky", MilkySettings(), sink)
    adapter.self_id = bot  # empty: learned from the envelope's self_id, as in production
    await adapter.on_event(record["event"])


async def _qqbot(record: dict[str, Any], bot: str, sink: Callable[[Event], Awaitable[None]]) -> None:
    adapter = QQBotAdapter("qqbot", QQBotSettings(appid=QQBOT_APPID, secret="qq-bot-secret-for-tests"), sink)
    await adapter.dispatch(record["event"])


DECODERS = {"mirai": _mirai, "onebot": _onebot, "satori": _satori, "milky": _milky, "qqbot": _qqbot}


def _texts(message: Any) -> str:
    return "".join(seg.text for seg in message if isinstance(seg, Text))


def _check_message(event: Event, expect: dict[str, Any], protocol: str) -> None:
    assert isinstance(event, MessageEvent)
    platform = "qqbot" if protocol == "qqbot" else expect.get("platform", "qq")
    assert event.platform == platform
    assert (event.chat_type, event.user_id, event.group_id) == (
        CHATS[expect["chat"]],
        expect["user_id"],
        expect["group_id"],
    )
    assert (event.message_id, event.to_me) == (expect["message_id"], expect["to_me"])
    # What the model is shown of the message.
    assert describe(event.message) == expect["text"]
    assert [type(seg).__name__ for seg in event.message] == expect["segments"]
    if "sender_name" in expect:
        assert event.sender_name == expect["sender_name"]
    if "role" in expect:
        assert event.sender_role is ROLES[expect["role"]]
    quotes = [seg for seg in event.message if isinstance(seg, Quote)]
    if "quote" in expect:
        [quote] = quotes
        assert (quote.message_id, quote.sender_id) == (expect["quote"]["id"], expect["quote"]["sender_id"])
        assert _texts(quote.origin) == expect["quote"]["text"]
    else:
        assert quotes == [], "a quote the expectation does not describe"
    if "image" in expect:
        image = next(seg for seg in event.message if isinstance(seg, Image))
        for field, value in expect["image"].items():
            assert getattr(image, field) == value, field
    if "voices" in expect:
        # What the conversation layer downloads to hear the voice: every voice, in order, with its source.
        voices = [seg for seg in event.message if isinstance(seg, Voice)]
        assert len(voices) == len(expect["voices"])
        for voice, fields in zip(voices, expect["voices"], strict=True):
            for field, value in fields.items():
                assert getattr(voice, field) == value, field


@pytest.mark.parametrize(("protocol", "record"), CASES)
async def test_recorded_payload_decodes_to_the_right_event(protocol: str, record: dict[str, Any]) -> None:
    events: list[Event] = []

    async def sink(event: Event) -> None:
        events.append(event)

    await DECODERS[protocol](record, _bot(FILES[protocol], record), sink)
    expect = record["expect"]
    if expect["kind"] == "none":
        assert events == [], expect["why"]
        return
    [event] = events
    if expect["kind"] == "message":
        _check_message(event, expect, protocol)
    elif expect["kind"] == "request":
        assert isinstance(event, RequestEvent)
        assert (event.kind, event.user_id, event.group_id, event.comment) == (
            expect["request"],
            expect["user_id"],
            expect["group_id"],
            expect["comment"],
        )
    else:
        assert isinstance(event, NoticeEvent) and event.kind == expect["notice"]
        assert (event.user_id, event.group_id) == (expect["user_id"], expect["group_id"])
