"""The forward-mode fake mirai-api-http behaves like the real ws and http adapters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.mirai_server import FakeMiraiServer

KEY = "test-verify-key"
QQ = 10001
CHAIN = [{"type": "Plain", "text": "hi"}]


@pytest.fixture
async def server() -> AsyncIterator[FakeMiraiServer]:
    fake = FakeMiraiServer(KEY, QQ)
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


async def dial(server: FakeMiraiServer, client: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect(server.ws_url, headers={"verifyKey": KEY, "qq": str(QQ)})
    assert (await receive(ws))["data"]["code"] == 0
    return ws


async def test_auth_via_headers_and_query(server: FakeMiraiServer, client: aiohttp.ClientSession) -> None:
    by_header = await client.ws_connect(server.ws_url, headers={"verifyKey": KEY, "qq": str(QQ)})
    first = await receive(by_header)
    assert first["syncId"] == "" and first["data"]["code"] == 0 and first["data"]["session"] in server.sessions
    by_query = await client.ws_connect(f"{server.base_url}/message?verifyKey={KEY}&qq={QQ}")
    assert (await receive(by_query))["data"]["code"] == 0
    # the header wins over the query, as in mirai
    header_wins = await client.ws_connect(f"{server.ws_url}?verifyKey=wrong&qq={QQ}", headers={"verifyKey": KEY})
    assert (await receive(header_wins))["data"]["code"] == 0
    await server.wait_connected()
    assert server.connections == 3 and server.refused == 0
    await by_header.close()
    await by_query.close()
    await header_wins.close()


@pytest.mark.parametrize(("key", "qq", "code"), [("wrong", QQ, 1), (KEY, 999, 2), (KEY, None, 400)])
async def test_refused_handshake_gets_code_then_close(
    server: FakeMiraiServer, client: aiohttp.ClientSession, key: str, qq: int | None, code: int
) -> None:
    headers = {"verifyKey": key} if qq is None else {"verifyKey": key, "qq": str(qq)}
    ws = await client.ws_connect(server.ws_url, headers=headers)
    frame = await receive(ws)
    assert frame["syncId"] == "" and frame["data"]["code"] == code
    closing = await asyncio.wait_for(ws.receive(), 2)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1000
    assert server.refused == 1 and server.connections == 0 and not server.connected


async def test_commands_are_answered_and_recorded(server: FakeMiraiServer, client: aiohttp.ClientSession) -> None:
    ws = await dial(server, client)
    await ws.send_json({"syncId": 7, "command": "sendGroupMessage", "content": {"target": 1, "messageChain": CHAIN}})
    assert await receive(ws) == {"syncId": "7", "data": {"code": 0, "msg": "success", "messageId": 1000}}
    await ws.send_json({"syncId": "8", "command": "botProfile", "subCommand": None, "content": {}})
    assert (await receive(ws))["data"]["nickname"] == server.nickname
    await ws.send_json({"syncId": "9", "command": "resp_newFriendRequestEvent", "content": {"eventId": 1}})
    assert (await receive(ws))["data"]["code"] == 0
    await ws.send_json({"syncId": "10", "command": "noSuchThing", "content": {}})
    assert (await receive(ws))["data"]["code"] == 6
    await ws.send_str("not json")
    assert await receive(ws) == {"code": 400, "msg": "参数错误"}
    commands = await server.wait_commands(3)
    assert [c["command"] for c in commands] == ["sendGroupMessage", "resp_newFriendRequestEvent", "noSuchThing"]
    await ws.close()


async def test_swallow_next_answers_minus_one(server: FakeMiraiServer, client: aiohttp.ClientSession) -> None:
    ws = await dial(server, client)
    server.swallow_next = 1
    for sync_id in ("1", "2"):
        await ws.send_json({"syncId": sync_id, "command": "sendFriendMessage", "content": {"messageChain": CHAIN}})
    assert (await receive(ws))["data"]["messageId"] == -1
    assert (await receive(ws))["data"]["messageId"] == 1000
    assert server.swallow_next == 0
    await ws.close()


async def test_push_reaches_the_client(server: FakeMiraiServer, client: aiohttp.ClientSession) -> None:
    ws = await dial(server, client)
    event = {"type": "FriendMessage", "sender": {"id": 5, "nickname": "友", "remark": ""}, "messageChain": []}
    await server.push(event)
    assert await receive(ws) == {"syncId": "-1", "data": event}
    await ws.close()


async def test_same_session_key_replaces_the_older_socket(
    server: FakeMiraiServer, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{server.base_url}/verify", json={"verifyKey": KEY}) as resp:
        session = (await resp.json())["session"]
    first = await client.ws_connect(server.ws_url, headers={"verifyKey": KEY, "sessionKey": session})
    assert (await receive(first))["data"]["code"] == 4  # not bound yet
    async with client.post(f"{server.base_url}/bind", json={"sessionKey": session, "qq": QQ}) as resp:
        assert (await resp.json())["code"] == 0
    older = await client.ws_connect(server.ws_url, headers={"verifyKey": KEY, "sessionKey": session})
    assert (await receive(older))["data"] == {"code": 0, "session": session}
    newer = await client.ws_connect(server.ws_url, headers={"verifyKey": KEY, "sessionKey": session})
    assert (await receive(newer))["data"]["session"] == session
    assert (await asyncio.wait_for(older.receive(), 2)).type is aiohttp.WSMsgType.CLOSE
    await newer.close()


async def test_stop_closes_and_start_reuses_the_port(server: FakeMiraiServer, client: aiohttp.ClientSession) -> None:
    ws = await dial(server, client)
    await ws.send_json({"syncId": "1", "command": "sendFriendMessage", "content": {"messageChain": CHAIN}})
    await receive(ws)
    port = server.port
    stopping = asyncio.create_task(server.stop())
    closing = await asyncio.wait_for(ws.receive(), 2)
    await stopping
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001
    assert not server.connected and server.sessions == {}
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.ws_connect(server.ws_url, headers={"verifyKey": KEY, "qq": str(QQ)})
    assert await server.start() == port
    again = await dial(server, client)
    await server.wait_connected()
    assert server.connections == 2 and len(server.commands) == 1
    await again.close()


async def test_upload_image(server: FakeMiraiServer, client: aiohttp.ClientSession) -> None:
    ws = await dial(server, client)
    session = next(iter(server.sessions))  # a websocket session is valid over http too
    form = aiohttp.FormData()
    form.add_field("type", "group")
    form.add_field("img", b"\x89PNG fake", filename="a.png", content_type="image/png")
    async with client.post(
        f"{server.base_url}/uploadImage", data=form, headers={"Authorization": f"session {session}"}
    ) as resp:
        body = await resp.json()
    assert body["imageId"].startswith("{") and body["imageId"].endswith("}.mirai") and "code" not in body
    assert server.uploads == [{"type": "group", "size": 9, "session": session}]

    bad = aiohttp.FormData()
    bad.add_field("sessionKey", "nope")
    bad.add_field("type", "friend")
    bad.add_field("img", b"x", filename="a.png")
    async with client.post(f"{server.base_url}/uploadImage", data=bad) as resp:
        assert await resp.json() == {"code": 3, "msg": "Session失效或不存在"}
    async with client.post(f"{server.base_url}/verify", json={"verifyKey": "wrong"}) as resp:
        assert (await resp.json())["code"] == 1
    async with client.get(f"{server.base_url}/nothing") as resp:
        assert resp.status == 404
    assert len(server.uploads) == 1
    await ws.close()
