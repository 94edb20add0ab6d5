"""The fake OneBot 11 implementation behaves like NapCat / LLOneBot in all four connection modes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.onebot_impl import FakeOneBot, parse_cq, sent_text, to_cq

SELF_ID = 10001
TOKEN = "test-token"
SEGMENTS = [{"type": "at", "data": {"qq": "10001"}}, {"type": "text", "data": {"text": " hi [1], & bye"}}]


@pytest.fixture
async def onebot() -> AsyncIterator[FakeOneBot]:
    fake = FakeOneBot(SELF_ID, access_token=TOKEN)
    yield fake
    await fake.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def receive(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    result: dict[str, Any] = json.loads(msg.data)
    return result


class BotServer:
    """A tiny reverse-WS endpoint standing in for the bot: keeps every socket the fake dials and its headers."""

    def __init__(self) -> None:
        self.sockets: asyncio.Queue[tuple[web.Request, web.WebSocketResponse]] = asyncio.Queue()
        self.done = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/onebot/v11/ws", self._ws)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True).start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}/onebot/v11/ws"
        return self.url

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.sockets.put((request, ws))
        await self.done.wait()
        return ws

    async def accept(self) -> tuple[web.Request, web.WebSocketResponse]:
        return await asyncio.wait_for(self.sockets.get(), 2)

    async def stop(self) -> None:
        self.done.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def bot_server() -> AsyncIterator[BotServer]:
    server = BotServer()
    await server.start()
    yield server
    await server.stop()


# ---- shared behaviour -----------------------------------------------------------------------------------------


async def test_actions_answered_recorded_and_failed_on_demand(onebot: FakeOneBot) -> None:
    login = await onebot.handle_action("get_login_info", {})
    assert login == {
        "status": "ok",
        "retcode": 0,
        "data": {"user_id": SELF_ID, "nickname": "小助手"},
        "message": "",
        "wording": "",
    }
    sent = await onebot.handle_action("send_group_msg", {"group_id": 5, "message": SEGMENTS})
    assert sent["data"] == {"message_id": 1000}
    assert (await onebot.handle_action("send_msg", {"user_id": 7, "message": "hello"}))["data"] == {"message_id": 1001}
    mine = await onebot.handle_action("get_msg", {"message_id": "1000"})
    assert mine["data"]["group_id"] == 5 and mine["data"]["sender"]["user_id"] == SELF_ID
    assert mine["data"]["message"] == SEGMENTS
    onebot.messages[1002] = {"message_id": 1002, "message": "earlier"}
    assert (await onebot.handle_action("get_msg", {"message_id": 1002}))["data"]["message"] == "earlier"
    missing = await onebot.handle_action("get_msg", {"message_id": 1})
    assert (missing["status"], missing["retcode"], missing["wording"]) == ("failed", 1404, "消息不存在")
    forward = await onebot.handle_action("send_private_forward_msg", {"user_id": 7, "messages": [{"type": "node"}]})
    assert forward["data"]["message_id"] == 1003  # 1002 is taken by a registered message
    assert (await onebot.handle_action("get_forward_msg", {"id": forward["data"]["forward_id"]}))["status"] == "ok"
    onebot.forwards["abc"] = {"messages": []}
    assert (await onebot.handle_action("get_forward_msg", {"message_id": "abc"}))["data"] == {"messages": []}
    assert (await onebot.handle_action("set_group_add_request", {"flag": "f", "approve": True}))["data"] is None
    unknown = await onebot.handle_action("nope", {})
    assert unknown == {
        "status": "failed",
        "retcode": 1404,
        "data": None,
        "message": "不支持的API",
        "wording": "不支持的API",
    }
    onebot.fail_next_action = 1
    failed = await onebot.handle_action("send_private_msg", {"user_id": 7, "message": "x"})
    assert (failed["status"], failed["retcode"], failed["wording"]) == ("failed", 1200, "发送失败")
    assert (await onebot.handle_action("send_private_msg", {"user_id": 7, "message": "x"}))["status"] == "ok"
    actions = await onebot.wait_actions(11)
    assert [a["action"] for a in actions][:3] == ["send_group_msg", "send_msg", "get_msg"]
    assert all(a["action"] != "get_login_info" for a in actions)
    assert sent_text(actions[0]) == " hi [1], & bye" and sent_text(actions[1]) == "hello"


def test_events_and_cq_strings(onebot: FakeOneBot) -> None:
    event = onebot.group_message(5, 42, SEGMENTS, 77, role="admin", card="阿明")
    assert event["raw_message"] == "[CQ:at,qq=10001] hi &#91;1&#93;, &amp; bye"
    assert parse_cq(event["raw_message"]) == SEGMENTS and to_cq(SEGMENTS) == event["raw_message"]
    assert (event["post_type"], event["message_type"], event["sub_type"], event["self_id"]) == (
        "message",
        "group",
        "normal",
        SELF_ID,
    )
    assert event["sender"]["role"] == "admin" and event["sender"]["card"] == "阿明" and event["group_id"] == 5
    private = onebot.private_message(42, "[CQ:face,id=1]hi", 78, sub_type="group")
    assert private["message"] == private["raw_message"] == "[CQ:face,id=1]hi" and private["sub_type"] == "group"
    assert {"time", "font", "sender", "user_id", "message_id"} <= private.keys()
    sent = onebot.message_sent_event("hi", 79, group_id=5)
    assert sent["post_type"] == "message_sent" and sent["user_id"] == SELF_ID and sent["group_id"] == 5


# ---- reverse WS -----------------------------------------------------------------------------------------------


async def test_reverse_universal(onebot: FakeOneBot, bot_server: BotServer) -> None:
    await onebot.connect_reverse(bot_server.url)
    request, ws = await bot_server.accept()
    assert request.headers["X-Self-ID"] == str(SELF_ID) and request.headers["X-Client-Role"] == "Universal"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert (b"x-client-role", b"Universal") in request.raw_headers  # the lower-case name LLOneBot sends
    lifecycle = await receive(ws)
    assert (lifecycle["meta_event_type"], lifecycle["sub_type"]) == ("lifecycle", "connect")
    await ws.send_json({"action": "send_private_msg", "params": {"user_id": 7, "message": "hi"}, "echo": {"n": 1}})
    answer = await receive(ws)
    assert answer["echo"] == {"n": 1} and answer["status"] == "ok" and answer["data"] == {"message_id": 1000}
    await onebot.push(onebot.private_message(7, "yo", 5))
    assert (await receive(ws))["raw_message"] == "yo"
    assert onebot.channels == ["reverse/universal"]


async def test_reverse_split_roles_heartbeat_drop_and_token_override(onebot: FakeOneBot, bot_server: BotServer) -> None:
    onebot.heartbeat_interval = 0.05
    await onebot.connect_reverse(bot_server.url, role="API", headers={"Authorization": f"Token {TOKEN}"})
    api_request, api = await bot_server.accept()
    await onebot.connect_reverse(bot_server.url + f"?access_token={TOKEN}", role="Event", token="")
    event_request, event = await bot_server.accept()
    assert api_request.headers["Authorization"] == f"Token {TOKEN}" and "Authorization" not in event_request.headers
    assert event_request.headers["X-Client-Role"] == "Event"
    assert (await receive(event))["meta_event_type"] == "lifecycle"
    heartbeat = await receive(event)
    assert heartbeat["meta_event_type"] == "heartbeat" and heartbeat["interval"] == 50
    await onebot.push(onebot.private_message(7, "yo", 5))
    while (frame := await receive(event))["post_type"] == "meta_event":
        pass
    assert frame["message_id"] == 5
    await api.send_json({"action": "get_login_info", "echo": "e1"})
    first = await receive(api)  # the API socket gets neither lifecycle, heartbeats nor events
    assert first["echo"] == "e1" and first["data"]["user_id"] == SELF_ID

    await onebot.drop()
    assert (await asyncio.wait_for(api.receive(), 2)).type is aiohttp.WSMsgType.CLOSED
    assert api.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE  # no close frame: a crash, not a goodbye
    assert onebot.channels == []
    await onebot.connect_reverse(bot_server.url)
    _, again = await bot_server.accept()
    assert (await receive(again))["sub_type"] == "connect"


async def test_reverse_waits_for_the_bot_and_redials_when_it_hangs_up(onebot: FakeOneBot) -> None:
    late = BotServer()
    url = await late.start()
    port = int(url.split(":")[2].split("/")[0])
    await late.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await onebot.connect_reverse(url, timeout=0.1)
    dialling = asyncio.create_task(onebot.connect_reverse(url, timeout=2))
    await asyncio.sleep(0.1)
    bot = BotServer()
    await bot.start(port)
    try:
        await dialling
        _, ws = await bot.accept()
        assert (await receive(ws))["sub_type"] == "connect"
        onebot.reconnect_interval = 0.05
        await ws.close()
        _, again = await bot.accept()
        assert (await receive(again))["sub_type"] == "connect" and onebot.connections == 2
    finally:
        await bot.stop()


# ---- forward WS -----------------------------------------------------------------------------------------------


async def test_forward_ws(onebot: FakeOneBot, client: aiohttp.ClientSession) -> None:
    url = await onebot.serve_forward()
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(url, headers=headers)
        assert refused.value.status == status
    assert onebot.refused == 2
    ws = await client.ws_connect(url, headers={"Authorization": f"bearer {TOKEN}"})
    api = await client.ws_connect(f"{url}api?access_token={TOKEN}")
    event_only = await client.ws_connect(f"{url}event", headers={"Authorization": f"Token {TOKEN}"})
    assert (await receive(ws))["sub_type"] == "connect" and (await receive(event_only))["sub_type"] == "connect"
    await onebot.wait_channels(3)
    await onebot.push(onebot.group_message(5, 42, "hi", 9))
    assert (await receive(ws))["group_id"] == 5 and (await receive(event_only))["group_id"] == 5
    await api.send_json({"action": "send_group_msg", "params": {"group_id": 5, "message": "re"}, "echo": 3})
    assert (await receive(api)) == {
        "status": "ok",
        "retcode": 0,
        "data": {"message_id": 1000},
        "message": "",
        "wording": "",
        "echo": 3,
    }
    await ws.send_str("not json")
    assert (await receive(ws))["retcode"] == 1400
    await event_only.send_json({"action": "send_group_msg", "params": {}, "echo": 4})  # ignored on /event
    await onebot.stop_forward()
    assert (await asyncio.wait_for(ws.receive(), 2)).type is aiohttp.WSMsgType.CLOSE
    assert len(onebot.actions) == 1
    assert await onebot.serve_forward() == url  # same port again
    again = await client.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await receive(again))["meta_event_type"] == "lifecycle"
    await onebot.drop()
    assert (await asyncio.wait_for(again.receive(), 2)).type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    for sock in (api, event_only, again):
        await sock.close()


# ---- HTTP API and HTTP POST -----------------------------------------------------------------------------------


async def test_http_api(onebot: FakeOneBot, client: aiohttp.ClientSession) -> None:
    base = await onebot.serve_http()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client.post(f"{base}/send_group_msg", json={"group_id": 5, "message": "hi"}, headers=bearer) as r:
        assert r.status == 200 and await r.json() == {
            "status": "ok",
            "retcode": 0,
            "data": {"message_id": 1000},
            "message": "",
            "wording": "",
        }
    async with client.post(f"{base}/send_group_msg/", json={}, headers={"Authorization": "Bearer no"}) as r:
        assert r.status == 403
    async with client.post(f"{base}/send_group_msg") as r:
        assert r.status == 401
    async with client.get(f"{base}/get_msg?message_id=1000&access_token={TOKEN}") as r:
        assert (await r.json())["data"]["message_id"] == 1000
    async with client.post(f"{base}/send_private_msg", data={"user_id": "7", "message": "x"}, headers=bearer) as r:
        assert (await r.json())["data"] == {"message_id": 1001}
    async with client.post(f"{base}/whatever", headers=bearer) as r:
        assert r.status == 404 and (await r.json())["retcode"] == 1404
    assert [a["params"] for a in onebot.actions[1:3]] == [{"message_id": "1000"}, {"user_id": "7", "message": "x"}]


async def test_post_event_signs_with_hmac(onebot: FakeOneBot) -> None:
    secret = "s3cret"
    seen: list[tuple[str, str | None, bytes]] = []

    async def receiver(request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Signature")
        seen.append((request.headers["X-Self-ID"], signature, body))
        expected = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        if signature != expected:
            return web.Response(status=403)
        if json.loads(body)["raw_message"] == "quick":
            return web.json_response({"reply": "ok"})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/onebot", receiver)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/onebot"
    try:
        event = onebot.private_message(7, "你好", 1)
        assert await onebot.post_event(url, event, secret=secret) == 204
        assert seen[0][0] == str(SELF_ID) and json.loads(seen[0][2]) == event
        assert await onebot.post_event(url, event, secret=secret, signature="sha1=00") == 403
        assert await onebot.post_event(url, event) == 403
        assert await onebot.post_event(url, onebot.private_message(7, "quick", 2), secret=secret) == 200
        assert onebot.quick_operations[0]["operation"] == {"reply": "ok"}
        onebot.post_url, onebot.post_secret = url, secret
        await onebot.push(event)
        assert onebot.post_replies[-1][0] == 204
    finally:
        await runner.cleanup()


# ---- SSE ------------------------------------------------------------------------------------------------------


async def test_sse(onebot: FakeOneBot, client: aiohttp.ClientSession) -> None:
    onebot.sse_ping_interval = 0.05
    base = await onebot.serve_http()
    async with client.get(f"{base}/_events", headers={"Authorization": "Bearer wrong"}) as refused:
        assert refused.status == 403
    async with client.get(f"{base}/_events", headers={"Authorization": f"Bearer {TOKEN}"}) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        await onebot.wait_channels(1)
        assert onebot.channels == ["sse"]
        assert await asyncio.wait_for(stream.content.readline(), 2) == b": ping\n"
        await onebot.push(onebot.group_message(5, 42, "hi", 9))
        lines: list[bytes] = []
        while not lines or not lines[-1].startswith(b"data:"):
            lines.append(await asyncio.wait_for(stream.content.readline(), 2))
        assert json.loads(lines[-1][len(b"data: ") :])["message_id"] == 9
        await onebot.drop_sse()
        rest = await asyncio.wait_for(stream.content.read(), 2)  # ends: read() returns at EOF
        assert b"data:" not in rest
    assert onebot.channels == []
