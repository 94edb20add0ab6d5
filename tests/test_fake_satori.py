"""The fake Satori server behaves like LLOneBot's: token and login checks, IDENTIFY/READY, PING and sn resume."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.satori_server import FakeSatori

SELF_ID = "10001"
TOKEN = "satori-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Satori-Platform": "llonebot", "Satori-User-ID": SELF_ID}


@pytest.fixture
async def satori() -> AsyncIterator[FakeSatori]:
    fake = FakeSatori(SELF_ID, token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    result: dict[str, Any] = json.loads(msg.data)
    return result


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return ws.close_code, msg.extra or ""


async def connect(
    session: aiohttp.ClientSession, fake: FakeSatori, sn: int | None = None, token: str = TOKEN
) -> aiohttp.ClientWebSocketResponse:
    """Open the event socket, IDENTIFY and read READY."""
    ws = await session.ws_connect(f"{fake.base_url}/v1/events")
    body: dict[str, Any] = {"token": token}
    if sn is not None:
        body["sn"] = sn
    await ws.send_json({"op": 3, "body": body})
    ready = await receive(ws)
    assert ready["op"] == 4
    return ws


async def test_identify_then_ready(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    ws = await client.ws_connect(f"{satori.base_url}/v1/events")
    await ws.send_json({"op": 3, "body": {"token": TOKEN}})
    ready = await receive(ws)
    assert ready == {
        "op": 4,
        "body": {
            "logins": [
                {
                    "sn": 1,
                    "platform": "llonebot",
                    "user": {"id": SELF_ID, "name": "小助手", "is_bot": True},
                    "status": 1,
                }
            ],
            "proxy_urls": [],
        },
    }
    await satori.wait_connected()
    assert satori.identifies == [{"token": TOKEN}]
    await ws.close()


async def test_bad_or_missing_token_closes_4004(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    for body in ({"token": "wrong"}, {}):
        ws = await client.ws_connect(f"{satori.base_url}/v1/events")
        await ws.send_json({"op": 3, "body": body})
        assert await closed_with(ws) == (4004, "invalid token")
    assert satori.connections == 0


async def test_invalid_json_closes_4000(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    ws = await client.ws_connect(f"{satori.base_url}/v1/events")
    await ws.send_str("{not json")
    assert await closed_with(ws) == (4000, "invalid message")


async def test_ready_body_can_be_replaced(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    satori.ready_body = {"logins": 5}
    ws = await client.ws_connect(f"{satori.base_url}/v1/events")
    await ws.send_json({"op": 3, "body": {"token": TOKEN}})
    assert await receive(ws) == {"op": 4, "body": {"logins": 5}}
    await ws.close()


async def test_upgrade_can_be_refused(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    satori.upgrade_failures = [500]
    satori.refuse_upgrade = 401
    for status in (401, 401):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(f"{satori.base_url}/v1/events")
        assert info.value.status == status
    satori.refuse_upgrade = None
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"{satori.base_url}/v1/events")
    assert info.value.status == 500
    ws = await connect(client, satori)
    assert satori.accepted == 1 and satori.refused == 3
    await ws.close()


async def test_push_raw_sends_bytes_as_they_are(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    # decode_text=False: the text frame arrives as its bytes instead of aiohttp refusing it (1007)
    ws = await client.ws_connect(f"{satori.base_url}/v1/events", decode_text=False)
    await ws.send_json({"op": 3, "body": {"token": TOKEN}})
    assert json.loads((await asyncio.wait_for(ws.receive(), 2)).data)["op"] == 4
    await satori.wait_connected()
    await satori.push_raw(b'{"op":0,"body":"\xff"}')
    await satori.push_raw(b"\x00", binary=True)
    text = await asyncio.wait_for(ws.receive(), 2)
    assert (text.type, text.data) == (aiohttp.WSMsgType.TEXT, b'{"op":0,"body":"\xff"}')
    binary = await asyncio.wait_for(ws.receive(), 2)
    assert (binary.type, binary.data) == (aiohttp.WSMsgType.BINARY, b"\x00")
    assert satori.sn == 0  # raw frames are not numbered or buffered
    await ws.close()


async def test_no_identify_in_time_closes(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    satori.identify_timeout = 0.2
    ws = await client.ws_connect(f"{satori.base_url}/v1/events")
    code, _ = await closed_with(ws)
    assert code == 4000


async def test_ping_pong(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    ws = await connect(client, satori)
    for _ in range(2):
        await ws.send_json({"op": 1, "body": {}})
        assert await receive(ws) == {"op": 2, "body": {}}
    assert satori.pings == 2
    await ws.close()


async def test_events_are_numbered_and_shaped(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    ws = await connect(client, satori)
    await satori.wait_connected()
    sn = await satori.push(satori.message_event("20001", "30001", "hi", "m1", guild_id="20001", name="Ann"))
    frame = await receive(ws)
    assert frame["op"] == 0
    event = frame["body"]
    assert event["sn"] == sn == 1
    assert event["type"] == "message-created"
    assert event["login"]["user"]["id"] == SELF_ID and event["login"]["platform"] == "llonebot"
    assert event["channel"] == {"id": "20001", "type": 0}
    assert event["guild"]["id"] == "20001"
    assert event["user"] == {"id": "30001", "name": "Ann"}
    assert event["member"] == {"nick": "Ann"}
    assert event["message"]["id"] == "m1" and event["message"]["content"] == "hi"
    assert isinstance(event["timestamp"], int) and event["timestamp"] > 10**12  # milliseconds

    await satori.push(satori.message_event("private:30001", "30001", "dm", "m2"))
    direct = (await receive(ws))["body"]
    assert direct["sn"] == 2
    assert direct["channel"] == {"id": "private:30001", "type": 1}
    assert "guild" not in direct and "member" not in direct

    await satori.push(satori.friend_request("40001", "req-1"))
    await satori.push(satori.guild_request("50001", "40001", "req-2"))
    friend, guild = (await receive(ws))["body"], (await receive(ws))["body"]
    assert (friend["type"], friend["user"]["id"], friend["message"]["id"]) == ("friend-request", "40001", "req-1")
    assert (guild["type"], guild["guild"]["id"], guild["message"]["id"]) == ("guild-request", "50001", "req-2")
    await ws.close()


async def test_legacy_event_shape(client: aiohttp.ClientSession) -> None:
    fake = FakeSatori(SELF_ID, legacy_events=True)
    await fake.start()
    try:
        ws = await connect(client, fake, token="")
        await fake.wait_connected()
        await fake.push(fake.message_event("20001", "30001", "hi", "m1", guild_id="20001"))
        event = (await receive(ws))["body"]
        assert "login" not in event
        assert (event["id"], event["sn"], event["self_id"], event["platform"]) == (1, 1, SELF_ID, "llonebot")
        await ws.close()
    finally:
        await fake.stop()


async def test_resume_replays_missed_events_before_new_ones(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    ws = await connect(client, satori)
    await satori.wait_connected()
    await satori.push(satori.message_event("1", "2", "one", "m1", guild_id="1"))
    assert (await receive(ws))["body"]["sn"] == 1

    await satori.drop()
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    assert satori.connections == 0

    # missed while disconnected: buffered, then replayed on resume
    await satori.push(satori.message_event("1", "2", "two", "m2", guild_id="1"))
    await satori.push(satori.message_event("1", "2", "three", "m3", guild_id="1"))
    ws = await connect(client, satori, sn=1)
    await satori.wait_connected()
    await satori.push(satori.message_event("1", "2", "four", "m4", guild_id="1"))
    contents = [(await receive(ws))["body"]["message"]["content"] for _ in range(3)]
    assert contents == ["two", "three", "four"]
    assert satori.identifies[-1] == {"token": TOKEN, "sn": 1}

    # without sn nothing is replayed
    fresh = await connect(client, satori)
    await satori.wait_connected(2)
    await satori.push(satori.message_event("1", "2", "five", "m5", guild_id="1"))
    assert (await receive(fresh))["body"]["sn"] == 5
    await ws.close()
    await fresh.close()


async def test_restart_keeps_buffer_and_sn(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    ws = await connect(client, satori)
    await satori.wait_connected()
    await satori.push(satori.message_event("1", "2", "one", "m1", guild_id="1"))
    await receive(ws)
    port = satori.port
    await satori.stop()
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    assert await satori.push(satori.message_event("1", "2", "while down", "m2", guild_id="1")) == 2
    await satori.start()
    assert satori.port == port
    ws = await connect(client, satori, sn=1)
    assert (await receive(ws))["body"]["message"]["content"] == "while down"
    assert await satori.push(satori.message_event("1", "2", "after", "m3", guild_id="1")) == 3
    await ws.close()


async def test_message_create_with_auth_and_login_headers(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    url = f"{satori.base_url}/v1/message.create"
    body = {"channel_id": "20001", "content": 'hi <at id="1"/>'}
    async with client.post(url, json=body, headers=HEADERS) as response:
        assert response.status == 200
        [message] = await response.json()
    assert message["content"] == body["content"]
    assert message["channel"]["id"] == "20001"
    assert message["id"] == "1000" and isinstance(message["created_at"], int)
    assert satori.messages["1000"] == message
    assert await satori.wait_calls(1) == [{"api": "message.create", "body": body}]

    no_token = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    cases = [
        (no_token, 401, "missing token"),
        ({**HEADERS, "Authorization": "Bearer wrong"}, 403, "invalid token"),
        ({**HEADERS, "Satori-User-ID": "999"}, 403, "login not found"),
        ({**HEADERS, "Satori-Platform": "other"}, 403, "login not found"),
        ({"Authorization": HEADERS["Authorization"]}, 403, "login not found"),
    ]
    for headers, status, text in cases:
        async with client.post(url, json=body, headers=headers) as response:
            assert (response.status, await response.text()) == (status, text)
    assert satori.refused == len(cases)
    assert len(satori.calls) == 1  # refused calls are not recorded

    # LLOneBot still accepts the older header names
    legacy = {"Authorization": HEADERS["Authorization"], "X-Platform": "llonebot", "X-Self-ID": SELF_ID}
    async with client.post(url, json=body, headers=legacy) as response:
        assert response.status == 200

    async with client.get(url, headers=HEADERS) as response:
        assert response.status == 405
    async with client.post(f"{satori.base_url}/v1/nope.nothing", json={}, headers=HEADERS) as response:
        assert response.status == 404


async def test_fail_next_and_other_apis(satori: FakeSatori, client: aiohttp.ClientSession) -> None:
    base = f"{satori.base_url}/v1"
    satori.fail_next = 1
    body = {"channel_id": "private:30001", "content": "x"}
    async with client.post(f"{base}/message.create", json=body, headers=HEADERS) as response:
        assert response.status == 500
    async with client.post(f"{base}/message.create", json=body, headers=HEADERS) as response:
        [sent] = await response.json()
    assert sent["channel"] == {"id": "private:30001", "type": 1}

    async with client.post(
        f"{base}/message.get", json={"channel_id": "x", "message_id": sent["id"]}, headers=HEADERS
    ) as r:
        assert (await r.json())["content"] == "x"
    satori.message_event("20001", "30001", "quoted", "m42", guild_id="20001")
    async with client.post(f"{base}/message.get", json={"message_id": "m42"}, headers=HEADERS) as r:
        assert (await r.json())["content"] == "quoted"
    async with client.post(f"{base}/message.get", json={"message_id": "missing"}, headers=HEADERS) as r:
        assert r.status == 404

    async with client.post(f"{base}/login.get", json={}, headers=HEADERS) as r:
        assert (await r.json())["user"]["id"] == SELF_ID
    for api in ("friend.approve", "guild.approve"):
        approve = {"message_id": "req-1", "approve": True, "comment": ""}
        async with client.post(f"{base}/{api}", json=approve, headers=HEADERS) as r:
            assert r.status == 200 and await r.read() == b""
    async with client.post(f"{base}/user.channel.create", json={"user_id": "30001"}, headers=HEADERS) as r:
        assert (await r.json())["id"] == "private:30001"

    calls = await satori.wait_calls(7)
    assert [c["api"] for c in calls] == [
        "message.create",
        "message.create",
        "message.get",
        "message.get",
        "message.get",
        "friend.approve",
        "guild.approve",
        "user.channel.create",
    ]
    assert calls[5]["body"] == {"message_id": "req-1", "approve": True, "comment": ""}
