"""The fake Milky implementation answers the HTTP API and pushes events the way the Milky spec says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.milky_server import FakeMilky, sent_text

SELF_ID = 10001
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXT = [{"type": "text", "data": {"text": "你好"}}]


@pytest.fixture
async def milky() -> AsyncIterator[FakeMilky]:
    fake = FakeMilky(SELF_ID, access_token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    client: aiohttp.ClientSession, milky: FakeMilky, api: str, params: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with client.post(
        f"{milky.base_url}/api/{api}", json=params, headers=AUTH if headers is None else headers
    ) as r:
        body = await r.json(content_type=None) if r.status == 200 else None
        return r.status, body


async def read_sse_event(response: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """One SSE event from the stream (comments skipped, multi-line data joined); returns (event name, data)."""
    name = "message"
    data: list[str] = []
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 2)).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if data:
                return name, json.loads("\n".join(data))
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


# --- API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
async def test_api_refuses_a_missing_or_wrong_token(
    milky: FakeMilky, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, _ = await call(client, milky, "get_login_info", {}, headers)
    assert status == 401
    assert milky.refused == 1


async def test_api_without_a_configured_token_needs_no_header(client: aiohttp.ClientSession) -> None:
    fake = FakeMilky(SELF_ID)
    await fake.start()
    try:
        status, body = await call(client, fake, "get_login_info", {}, {})
        assert (status, body) == (200, {"status": "ok", "retcode": 0, "data": {"uin": SELF_ID, "nickname": "小助手"}})
    finally:
        await fake.stop()


async def test_api_http_statuses(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    assert (await call(client, milky, "no_such_api", {}))[0] == 404
    async with client.post(f"{milky.base_url}/api/get_login_info", data="{}", headers=AUTH) as r:
        assert r.status == 415  # text/plain
    # everything else is 200; a body that is not an object is a parameter error
    status, body = await call(client, milky, "get_login_info", [])
    assert (status, body["status"], body["retcode"]) == (200, "failed", -400)
    assert milky.calls == []  # start-up calls and refused requests are not recorded


async def test_send_is_answered_with_a_message_seq_and_recorded(
    milky: FakeMilky, client: aiohttp.ClientSession
) -> None:
    status, body = await call(client, milky, "send_group_message", {"group_id": 20002, "message": TEXT})
    assert status == 200 and body["status"] == "ok" and body["retcode"] == 0
    assert body["data"]["message_seq"] == 1000 and isinstance(body["data"]["time"], int)
    _, body = await call(client, milky, "send_private_message", {"user_id": 30003, "message": TEXT})
    assert body["data"]["message_seq"] == 1001
    calls = await milky.wait_calls(2)
    assert calls[0] == {"api": "send_group_message", "params": {"group_id": 20002, "message": TEXT}}
    assert [sent_text(c) for c in calls] == ["你好", "你好"]
    # the bot's own message can be fetched back
    _, body = await call(
        client, milky, "get_message", {"message_scene": "group", "peer_id": 20002, "message_seq": 1000}
    )
    assert body["data"]["message"]["sender_id"] == SELF_ID and body["data"]["message"]["segments"] == TEXT


async def test_fail_next_and_bad_params(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    milky.fail_next = 1
    _, body = await call(client, milky, "send_group_message", {"group_id": 20002, "message": TEXT})
    assert body == {"status": "failed", "retcode": -500, "message": "send failed"}
    _, body = await call(client, milky, "send_group_message", {"group_id": 20002, "message": TEXT})
    assert body["status"] == "ok"
    _, body = await call(client, milky, "send_private_message", {"user_id": "x", "message": TEXT})
    assert body["retcode"] == -400
    _, body = await call(client, milky, "send_private_message", {"user_id": 1, "message": []})
    assert body["retcode"] == -400


async def test_get_message_and_forwarded_messages(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    milky.message_event("friend", 30003, 30003, TEXT, 77)
    _, body = await call(client, milky, "get_message", {"message_scene": "friend", "peer_id": 30003, "message_seq": 77})
    assert body["data"]["message"]["segments"] == TEXT
    _, body = await call(client, milky, "get_message", {"message_scene": "friend", "peer_id": 30003, "message_seq": 78})
    assert body["status"] == "failed"
    nodes = [{"message_seq": 1, "sender_name": "A", "avatar_url": "", "time": 1, "segments": TEXT}]
    milky.forwards["fw-1"] = nodes
    _, body = await call(client, milky, "get_forwarded_messages", {"forward_id": "fw-1"})
    assert body["data"] == {"messages": nodes}
    _, body = await call(client, milky, "get_forwarded_messages", {"forward_id": "nope"})
    assert body["status"] == "failed"


async def test_request_answers_are_recorded(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    request = milky.friend_request(30003, "加个好友")["data"]
    params = [
        ("accept_friend_request", {"initiator_uid": request["initiator_uid"], "is_filtered": False}),
        ("reject_friend_request", {"initiator_uid": request["initiator_uid"], "reason": "no"}),
        ("accept_group_invitation", {"group_id": 20002, "invitation_seq": 5}),
        ("reject_group_invitation", {"group_id": 20002, "invitation_seq": 6}),
    ]
    for api, p in params:
        assert (await call(client, milky, api, p))[1] == {"status": "ok", "retcode": 0, "data": {}}
    assert [(c["api"], c["params"]) for c in await milky.wait_calls(4)] == params
    _, body = await call(client, milky, "accept_group_invitation", {"group_id": 20002})
    assert body["retcode"] == -400


# --- events ---------------------------------------------------------------------------------------


async def test_ws_and_sse_both_receive_a_pushed_event(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    ws = await client.ws_connect(f"{milky.base_url}/event", headers=AUTH)
    # the query token is the fallback for clients that cannot set headers
    sse = await client.get(f"{milky.base_url}/event?access_token={TOKEN}")
    assert sse.status == 200 and sse.headers["Content-Type"].startswith("text/event-stream")
    assert sorted(await milky.wait_channels(2)) == ["sse", "ws"]
    event = milky.message_event("group", 20002, 30003, TEXT, 5, role="admin", card="管理")
    await milky.push(event)
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data) == event
    assert await read_sse_event(sse) == ("milky_event", event)
    await milky.drop()
    assert (await asyncio.wait_for(ws.receive(), 2)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert await asyncio.wait_for(sse.content.read(), 2) == b""
    assert milky.channels == []
    await ws.close()
    sse.close()


async def test_sse_pretty_data_is_split_over_lines(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    milky.sse_pretty = True
    async with client.get(f"{milky.base_url}/event", headers=AUTH) as sse:
        await milky.wait_channels(1)
        event = milky.friend_nudge(30003)
        await milky.push(event)
        assert await read_sse_event(sse) == ("milky_event", event)


async def test_push_raw_sends_bytes_as_they_are(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    # decode_text=False: the text frame arrives as its bytes instead of aiohttp refusing it (1007)
    ws = await client.ws_connect(f"{milky.base_url}/event", headers=AUTH, decode_text=False)
    async with client.get(f"{milky.base_url}/event", headers=AUTH) as sse:
        await milky.wait_channels(2)
        await milky.push_raw(b'{"a":"\xff"}')
        await milky.push_raw(b"\x00\x01", binary=True)
        text = await asyncio.wait_for(ws.receive(), 2)
        assert (text.type, text.data) == (aiohttp.WSMsgType.TEXT, b'{"a":"\xff"}')
        binary = await asyncio.wait_for(ws.receive(), 2)
        assert (binary.type, binary.data) == (aiohttp.WSMsgType.BINARY, b"\x00\x01")
        lines = [await asyncio.wait_for(sse.content.readline(), 2) for _ in range(3)]
        assert lines == [b"event: milky_event\n", b'data: {"a":"\xff"}\n', b"\n"]
    await ws.close()


async def test_event_failures_answer_an_html_page_once_each(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    milky.event_failures = [500, 200]
    for status in (500, 200):
        async with client.get(f"{milky.base_url}/event", headers=AUTH) as response:
            assert response.status == status and response.content_type == "text/html"
    async with client.get(f"{milky.base_url}/event", headers=AUTH) as response:
        assert response.content_type == "text/event-stream"
    assert milky.connections == 1


@pytest.mark.parametrize("ws", [True, False])
async def test_event_endpoint_refuses_a_wrong_token(milky: FakeMilky, client: aiohttp.ClientSession, ws: bool) -> None:
    url = f"{milky.base_url}/event?access_token=wrong"
    if ws:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(url)
        assert info.value.status == 401
    else:
        async with client.get(url) as response:
            assert response.status == 401


async def test_webhook_post_carries_the_bearer_token(milky: FakeMilky) -> None:
    received: asyncio.Queue[tuple[str | None, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put((request.headers.get("Authorization"), await request.json()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        milky.webhook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        event = milky.group_invitation(20002, 9, 30003)
        await milky.push(event)
        assert await asyncio.wait_for(received.get(), 2) == (f"Bearer {TOKEN}", event)
        assert milky.webhook_statuses == [204]
    finally:
        await runner.cleanup()
    # nobody listening any more: recorded as 0 instead of failing the push
    await milky.push(event)
    assert milky.webhook_statuses == [204, 0]


def test_event_builders_follow_the_spec(milky: FakeMilky) -> None:
    friend = milky.message_event("friend", 30003, 30003, TEXT, 1)
    assert friend["self_id"] == SELF_ID and friend["event_type"] == "message_receive"
    assert friend["data"]["segments"] == TEXT and friend["data"]["friend"]["user_id"] == 30003
    group = milky.message_event("group", 20002, 30003, TEXT, 2, use_old_key=True, role="owner")
    assert "segments" not in group["data"] and group["data"]["message"] == TEXT
    assert group["data"]["group"]["group_id"] == 20002 and group["data"]["group_member"]["role"] == "owner"
    assert milky.friend_request(30003, "hi")["data"]["initiator_uid"]
    assert milky.group_nudge(20002, 30003, SELF_ID)["data"]["receiver_id"] == SELF_ID
    assert milky.friend_nudge(30003)["data"]["is_self_receive"] is True


async def test_restart_on_the_same_port(milky: FakeMilky, client: aiohttp.ClientSession) -> None:
    url = milky.base_url
    await milky.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(client, milky, "get_login_info", {})
    assert await milky.start() == url
    assert (await call(client, milky, "get_login_info", {}))[0] == 200
