"""The fake QQ open platform behaves like the official bot API: token, REST, rich media, gateway and WebHook."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature

from tests.fakes.qq_official import FakeQQ, ed25519_key, has_url

APPID = "102000001"
SECRET = "test-secret-abc"
INTENTS = 1 << 25


@pytest.fixture
async def qq() -> AsyncIterator[FakeQQ]:
    fake = FakeQQ(APPID, SECRET)
    fake.heartbeat_interval_ms = 300
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_token(client: aiohttp.ClientSession, qq: FakeQQ) -> str:
    async with client.post(
        f"{qq.base_url}/app/getAppAccessToken", json={"appId": APPID, "clientSecret": SECRET}
    ) as response:
        assert response.status == 200
        return str((await response.json())["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"QQBot {token}", "X-Union-Appid": APPID}


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def identify(
    client: aiohttp.ClientSession, qq: FakeQQ, token: str, shard: tuple[int, int] = (0, 1)
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await client.ws_connect(f"ws://127.0.0.1:{qq.port}/websocket/")
    assert await receive(ws) == {"op": 10, "d": {"heartbeat_interval": 300}}
    await ws.send_json({"op": 2, "d": {"token": f"QQBot {token}", "intents": INTENTS, "shard": list(shard)}})
    ready = await receive(ws)
    assert ready["t"] == "READY"
    return ws, ready


async def post(client: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    async with client.post(url, json=body, headers=auth(token)) as response:
        return response.status, await response.json()


# ---- token and REST -------------------------------------------------------------------------------------------


async def test_token_issue_reuse_and_wrong_secret(client: aiohttp.ClientSession) -> None:
    fake = FakeQQ(APPID, SECRET, token_ttl=7200)
    await fake.start()
    try:
        url = f"{fake.base_url}/app/getAppAccessToken"
        async with client.post(url, json={"appId": APPID, "clientSecret": SECRET}) as response:
            first = await response.json()
        assert first == {"access_token": "tok-1", "expires_in": "7200"}
        # far from expiry the same token comes back
        async with client.post(url, json={"appId": APPID, "clientSecret": SECRET}) as response:
            again = await response.json()
        assert again["access_token"] == "tok-1" and isinstance(again["expires_in"], str)
        assert fake.tokens_issued == ["tok-1"]
        async with client.post(url, json={"appId": APPID, "clientSecret": "nope"}) as response:
            assert response.status == 401
            assert await response.json() == {"code": 100016, "message": "invalid appid or secret"}
    finally:
        await fake.stop()


async def test_short_ttl_issues_a_new_token_each_time_and_old_ones_expire(client: aiohttp.ClientSession) -> None:
    fake = FakeQQ(APPID, SECRET, token_ttl=1)
    await fake.start()
    try:
        first = await get_token(client, fake)
        second = await get_token(client, fake)
        assert (first, second) == ("tok-1", "tok-2")
        assert fake.tokens_issued == ["tok-1", "tok-2"]
        async with client.get(f"{fake.base_url}/gateway/bot", headers=auth(first)) as response:
            assert response.status == 200  # still inside its lifetime
        await asyncio.sleep(1.05)
        async with client.get(f"{fake.base_url}/gateway/bot", headers=auth(second)) as response:
            assert response.status == 401
    finally:
        await fake.stop()


async def test_rest_needs_a_valid_qqbot_token(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    for headers in ({}, {"Authorization": "QQBot wrong"}, {"Authorization": f"Bearer {token}"}):
        async with client.get(f"{qq.base_url}/gateway/bot", headers=headers) as response:
            assert response.status == 401
            assert await response.json() == {"code": 11241, "message": "token invalid"}
    async with client.get(f"{qq.base_url}/gateway/bot", headers=auth(token)) as response:
        assert response.status == 200
        gateway = await response.json()
    assert gateway["url"] == f"ws://127.0.0.1:{qq.port}/websocket/"
    assert gateway["shards"] == 1 and gateway["session_start_limit"]["max_concurrency"] == 1
    assert qq.requests[-1] == {"method": "GET", "path": "/gateway/bot", "union_appid": APPID, "authorized": True}
    qq.revoke_tokens()
    async with client.get(f"{qq.base_url}/gateway/bot", headers=auth(token)) as response:
        assert response.status == 401


# ---- gateway --------------------------------------------------------------------------------------------------


async def test_hello_identify_ready_heartbeat_and_dispatch(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    ws, ready = await identify(client, qq, token)
    assert ready == {
        "op": 0,
        "s": 1,
        "t": "READY",
        "d": {
            "version": 1,
            "session_id": "sess-1",
            "user": {"id": "bot-1", "username": "测试机器人", "bot": True},
            "shard": [0, 1],
        },
    }
    assert qq.identifies[0]["intents"] == INTENTS
    await qq.wait_ready(1)
    assert qq.connected_shards == [0]

    await ws.send_json({"op": 1, "d": 1})
    assert await receive(ws) == {"op": 11}
    assert qq.heartbeats == 1 and qq.heartbeat_seqs == [1]

    msg_id = await qq.push_group_at("G1", "M1", "你好", attachments=[{"content_type": "image/png", "url": "u"}])
    event = await receive(ws)
    assert event["op"] == 0 and event["s"] == 2 and event["t"] == "GROUP_AT_MESSAGE_CREATE"
    assert event["id"].startswith("GROUP_AT_MESSAGE_CREATE:")
    d = event["d"]
    assert d["id"] == msg_id and msg_id.startswith("ROBOT1.0_")
    assert d["content"] == " 你好" and d["group_openid"] == "G1" and d["author"]["member_openid"] == "M1"
    assert d["attachments"] == [{"content_type": "image/png", "url": "u"}]

    c2c_id = await qq.push_c2c("U1", "hi")
    event = await receive(ws)
    assert event["s"] == 3 and event["t"] == "C2C_MESSAGE_CREATE"
    assert event["d"]["id"] == c2c_id and event["d"]["content"] == "hi" and event["d"]["author"]["user_openid"] == "U1"
    assert "attachments" not in event["d"]

    await qq.redeliver(msg_id)
    again = await receive(ws)
    assert again["s"] == 4 and again["d"] == d

    qq.ack_heartbeats = False
    await ws.send_json({"op": 1, "d": 4})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.receive(), 0.2)
    assert qq.heartbeats == 2
    await ws.close()


async def test_identify_with_a_bad_token_is_closed_4004(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    ws = await client.ws_connect(f"ws://127.0.0.1:{qq.port}/websocket/")
    await receive(ws)
    await ws.send_json({"op": 2, "d": {"token": "QQBot forged", "intents": INTENTS, "shard": [0, 1]}})
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4004


async def test_resume_replays_missed_events_then_resumed(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    ws, ready = await identify(client, qq, token)
    await qq.push_c2c("U1", "one")
    assert (await receive(ws))["s"] == 2
    await qq.drop()
    assert qq.connected_shards == []
    await qq.push_c2c("U1", "two")
    await qq.push_c2c("U1", "three")

    ws2 = await client.ws_connect(f"ws://127.0.0.1:{qq.port}/websocket/")
    await receive(ws2)
    resume = {"token": f"QQBot {token}", "session_id": ready["d"]["session_id"], "seq": 2}
    await ws2.send_json({"op": 6, "d": resume})
    replayed = [await receive(ws2) for _ in range(3)]
    assert [(f["s"], f["d"]["content"] if f["t"] != "RESUMED" else None) for f in replayed] == [
        (3, "two"),
        (4, "three"),
        (5, None),
    ]
    assert replayed[2] == {"op": 0, "t": "RESUMED", "s": 5, "d": ""}
    assert qq.resumes == [resume]
    assert [h["t"] for h in await qq.wait_ready(2)] == ["READY", "RESUMED"]
    await qq.push_c2c("U1", "four")
    assert (await receive(ws2))["s"] == 6
    await ws2.close()


async def test_close_codes_reach_the_client_and_decide_resumability(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    ws, ready = await identify(client, qq, token)
    await qq.close_socket(4009)
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4009

    ws2 = await client.ws_connect(f"ws://127.0.0.1:{qq.port}/websocket/")
    await receive(ws2)
    session_id = ready["d"]["session_id"]
    await ws2.send_json({"op": 6, "d": {"token": f"QQBot {token}", "session_id": session_id, "seq": 1}})
    assert (await receive(ws2))["t"] == "RESUMED"

    await qq.close_socket(4006)
    await asyncio.wait_for(ws2.receive(), 2)
    assert ws2.close_code == 4006
    # 4006 forgot the session: resuming it again is refused
    ws3 = await client.ws_connect(f"ws://127.0.0.1:{qq.port}/websocket/")
    await receive(ws3)
    await ws3.send_json({"op": 6, "d": {"token": f"QQBot {token}", "session_id": session_id, "seq": 2}})
    await asyncio.wait_for(ws3.receive(), 2)
    assert ws3.close_code == 4006


async def test_reconnect_and_invalid_session_ops(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    ws, _ = await identify(client, qq, token)
    await qq.send_op(7)
    assert await receive(ws) == {"op": 7}
    await qq.send_op(9)
    assert await receive(ws) == {"op": 9, "d": False}
    await ws.close()


async def test_shards_are_separate_sessions(client: aiohttp.ClientSession) -> None:
    fake = FakeQQ(APPID, SECRET, shards=2)
    fake.heartbeat_interval_ms = 300
    await fake.start()
    try:
        token = await get_token(client, fake)
        ws0, ready0 = await identify(client, fake, token, (0, 2))
        ws1, ready1 = await identify(client, fake, token, (1, 2))
        assert ready0["d"]["session_id"] != ready1["d"]["session_id"] and ready1["d"]["shard"] == [1, 2]
        assert fake.connected_shards == [0, 1]
        await fake.push_c2c("U1", "to shard 1", shard=1)
        event = await receive(ws1)
        assert event["s"] == 2 and event["d"]["content"] == "to shard 1"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws0.receive(), 0.1)
        bad = await client.ws_connect(f"ws://127.0.0.1:{fake.port}/websocket/")
        await receive(bad)
        await bad.send_json({"op": 2, "d": {"token": f"QQBot {token}", "intents": INTENTS, "shard": [2, 2]}})
        await asyncio.wait_for(bad.receive(), 2)
        assert bad.close_code == 4010
    finally:
        await fake.stop()


# ---- sending --------------------------------------------------------------------------------------------------


async def test_msg_seq_dedupe_reply_limit_and_url_refusal(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    await identify(client, qq, token)
    msg_id = await qq.push_group_at("G1", "M1", "hi")
    url = f"{qq.base_url}/v2/groups/G1/messages"

    status, answer = await post(client, url, {"content": "one", "msg_type": 0, "msg_id": msg_id, "msg_seq": 1}, token)
    assert status == 200 and answer["id"] == "msg-1" and isinstance(answer["timestamp"], int)
    status, answer = await post(client, url, {"content": "dup", "msg_type": 0, "msg_id": msg_id, "msg_seq": 1}, token)
    assert (status, answer) == (400, {"code": 40054005, "message": "消息被去重，请检查请求msgseq"})
    for seq in range(2, 6):
        status, _ = await post(client, url, {"content": "ok", "msg_type": 0, "msg_id": msg_id, "msg_seq": seq}, token)
        assert status == 200
    status, answer = await post(client, url, {"content": "6th", "msg_type": 0, "msg_id": msg_id, "msg_seq": 6}, token)
    assert (status, answer) == (400, {"code": 22009, "message": "msg limit exceed"})

    other = await qq.push_group_at("G1", "M1", "again")
    for text in ("see https://a.b/c", "visit example.com now", "运行1.sh", "http://x"):
        status, answer = await post(client, url, {"content": text, "msg_type": 0, "msg_id": other}, token)
        assert (status, answer) == (400, {"code": 40054010, "message": "消息发送失败，不允许发送url"}), text
    status, _ = await post(client, url, {"content": "版本 3.14，example。com", "msg_type": 0, "msg_id": other}, token)
    assert status == 200

    messages = await qq.wait_messages(6)
    assert len(messages) == 6
    assert messages[0] == {
        "path": "/v2/groups/G1/messages",
        "scope": "group",
        "target": "G1",
        "body": {"content": "one", "msg_type": 0, "msg_id": msg_id, "msg_seq": 1},
    }
    assert [r["code"] for r in qq.rejected] == [40054005, 22009, 40054010, 40054010, 40054010, 40054010]
    assert qq.requests[-1]["union_appid"] == APPID


async def test_reply_rules_active_messages_and_wrong_targets(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    token = await get_token(client, qq)
    await identify(client, qq, token)
    c2c_id = await qq.push_c2c("U1", "hi")
    status, answer = await post(client, f"{qq.base_url}/v2/users/U1/messages", {"content": "x"}, token)
    assert (status, answer["code"]) == (400, 22009)  # active messages are gone
    status, _ = await post(client, f"{qq.base_url}/v2/groups/U1/messages", {"content": "x", "msg_id": c2c_id}, token)
    assert status == 400  # a C2C msg_id cannot be answered in a group
    status, _ = await post(client, f"{qq.base_url}/v2/users/U2/messages", {"content": "x", "msg_id": c2c_id}, token)
    assert status == 400
    status, _ = await post(client, f"{qq.base_url}/v2/users/U1/messages", {"content": "x", "msg_id": c2c_id}, token)
    assert status == 200
    assert qq.messages[-1]["scope"] == "user" and qq.messages[-1]["target"] == "U1"
    qq.reply_window["user"] = 0.0
    status, _ = await post(client, f"{qq.base_url}/v2/users/U1/messages", {"content": "y", "msg_id": c2c_id}, token)
    assert status == 400
    qq.allow_active = True
    status, _ = await post(client, f"{qq.base_url}/v2/users/U1/messages", {"content": "z"}, token)
    assert status == 200
    qq.fail_sends.append((500, {"code": 500000, "message": "internal"}))
    status, answer = await post(client, f"{qq.base_url}/v2/users/U1/messages", {"content": "z"}, token)
    assert (status, answer) == (500, {"code": 500000, "message": "internal"})


class MediaHost:
    """A tiny media server standing in for the bot's file host."""

    PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/cat.png", self._png)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _png(self, request: web.Request) -> web.Response:
        return web.Response(body=self.PNG, content_type="image/png")


async def test_file_upload_fetches_the_url_and_media_send(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    host = MediaHost()
    await host.start()
    try:
        token = await get_token(client, qq)
        await identify(client, qq, token)
        msg_id = await qq.push_group_at("G1", "M1", "画猫")
        body = {"file_type": 1, "url": f"{host.base_url}/cat.png", "srv_send_msg": False}
        status, answer = await post(client, f"{qq.base_url}/v2/groups/G1/files", body, token)
        assert status == 200 and answer["file_info"] == "fi-1" and answer["ttl"] == 3600 and answer["file_uuid"]
        assert qq.uploads[0]["status"] == 200 and qq.uploads[0]["size"] == len(MediaHost.PNG)
        assert qq.uploads[0]["ok"] and qq.uploads[0]["scope"] == "group"

        missing = {"file_type": 1, "url": f"{host.base_url}/missing.png", "srv_send_msg": False}
        status, answer = await post(client, f"{qq.base_url}/v2/groups/G1/files", missing, token)
        assert (status, answer) == (400, {"code": 304082, "message": "富媒体文件下载失败"})
        assert qq.uploads[1]["status"] == 404 and not qq.uploads[1]["ok"]

        media = {"content": " ", "msg_type": 7, "media": {"file_info": "fi-1"}, "msg_id": msg_id, "msg_seq": 1}
        status, _ = await post(client, f"{qq.base_url}/v2/groups/G1/messages", media, token)
        assert status == 200
        c2c_id = await qq.push_c2c("U1", "hi")
        status, _ = await post(client, f"{qq.base_url}/v2/users/U1/messages", {**media, "msg_id": c2c_id}, token)
        assert status == 400  # a group upload's file_info is for groups only
    finally:
        await host.stop()


# ---- WebHook --------------------------------------------------------------------------------------------------


def test_official_op13_test_vector() -> None:
    key = ed25519_key("DG5g3B4j9X2KOErG")
    signature = key.sign(b"1725442341" + b"Arq0D5A61EgUu4OxUvOp").hex()
    assert signature == (
        "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
        "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706"
    )


def test_url_detector() -> None:
    assert has_url("go to qq.com") and has_url("HTTPS://X") and has_url("中文example.org中文")
    assert not has_url("3.14 and v1.2.3") and not has_url("你好。世界") and not has_url("e.g")


class WebhookReceiver:
    """A bot-side callback endpoint: verifies signatures and answers op 13 with a configurable secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/qq", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/qq"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append((dict(request.headers), raw))
        timestamp = request.headers.get("X-Signature-Timestamp", "")
        try:
            signature = bytes.fromhex(request.headers["X-Signature-Ed25519"])
            ed25519_key(SECRET).public_key().verify(signature, timestamp.encode() + raw)
        except (KeyError, ValueError, InvalidSignature):
            return web.Response(status=401, text="bad signature")
        payload = json.loads(raw)
        if payload["op"] == 13:
            d = payload["d"]
            signed = ed25519_key(self.secret).sign((d["event_ts"] + d["plain_token"]).encode()).hex()
            return web.json_response({"plain_token": d["plain_token"], "signature": signed})
        return web.json_response({"op": 12})


async def test_webhook_signing_and_validation(qq: FakeQQ) -> None:
    receiver = WebhookReceiver(SECRET)
    await receiver.start()
    try:
        event = qq.group_at_event("G1", "M1", "hello")
        assert await qq.send_webhook(receiver.url, event) == (200, '{"op": 12}')
        headers, raw = receiver.requests[-1]
        assert headers["User-Agent"] == "QQBot-Callback" and headers["X-Bot-Appid"] == APPID
        assert json.loads(raw) == event and len(bytes.fromhex(headers["X-Signature-Ed25519"])) == 64
        assert (await qq.send_webhook(receiver.url, event, bad_signature=True))[0] == 401
        assert (await qq.send_webhook(receiver.url, event, sign=False))[0] == 401
        assert "X-Signature-Ed25519" not in receiver.requests[-1][0]

        result = await qq.validate_webhook(receiver.url)
        assert result["ok"] and result["status"] == 200 and set(result["answer"]) == {"plain_token", "signature"}
        receiver.secret = "some-other-secret"
        assert not (await qq.validate_webhook(receiver.url))["ok"]
    finally:
        await receiver.stop()


# ---- faults -----------------------------------------------------------------------------------------------------


async def test_raw_answers_and_frames_come_out_as_given(qq: FakeQQ, client: aiohttp.ClientSession) -> None:
    qq.token_answers.append((502, b"<html>"))
    url = f"{qq.base_url}/app/getAppAccessToken"
    async with client.post(url, json={"appId": APPID, "clientSecret": SECRET}) as response:
        assert (response.status, await response.read()) == (502, b"<html>")
    token = await get_token(client, qq)
    qq.gateway_answers.append((200, b"\xff"))
    async with client.get(f"{qq.base_url}/gateway/bot", headers=auth(token)) as response:
        assert await response.read() == b"\xff"
    ws, _ = await identify(client, qq, token)
    assert qq.connections == 1 and qq.current_seq() == 1
    await qq.send_raw(b"\xff{")
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.ERROR  # a TEXT frame that is not UTF-8, as a broken peer sends it
    await ws.close()


async def test_post_raw_sends_any_header_byte(qq: FakeQQ) -> None:
    receiver = WebhookReceiver(SECRET)
    url = await receiver.start()
    try:
        timestamp, event = "1725442341", b'{"op": 0}'
        signature = qq.sign(timestamp, event).encode()
        status, _ = await qq.post_raw(url, event, [(b"X-Signature-Ed25519", b"\xff"), (b"X-Signature-Timestamp", b"1")])
        assert status == 401
        headers = [(b"X-Signature-Ed25519", signature), (b"X-Signature-Timestamp", timestamp.encode())]
        status, _ = await qq.post_raw(url, b'{"op": 0, "d": 1}', headers)
        assert status == 401  # signed over another body
        status, body = await qq.post_raw(url, event, headers)
        assert (status, json.loads(body)) == (200, {"op": 12}) and receiver.requests[-1][1] == event
    finally:
        await receiver.stop()
