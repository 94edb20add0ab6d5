"""Regressions of the QQ webhook's security holes (issue 12): op 13 oracle, stale timestamps, replays, 5xx."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from adapters.link import LinkState
from tests.conftest import eventually, free_port, start_bot
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.qq_official import FakeQQ
from tests.test_e2e_qqbot import (
    QQ,
    qq_fixture,  # noqa: F401  (the `qq` fixture)
)

ADMIN = "ADMIN-OPENID"
ADMIN_COMMAND = ".设置 好友 默认 额度为 0 条/小时"


async def start_webhook(qq: Any, **section: Any) -> tuple[QQ, str]:
    port = free_port()
    section = {"mode": "webhook", "webhook_host": "127.0.0.1", "webhook_port": port, "webhook_path": "/cb"} | section
    q: QQ = await qq(**section)
    return q, f"http://127.0.0.1:{port}/cb"


def headers(timestamp: str, signature: str = "") -> list[tuple[bytes, bytes]]:
    out = [(b"Content-Type", b"application/json"), (b"X-Signature-Timestamp", timestamp.encode())]
    if signature:
        out.append((b"X-Signature-Ed25519", signature.encode()))
    return out


async def settle(q: QQ) -> None:
    """Wait until every accepted callback has been handled and answered."""
    await eventually(lambda: len(q.adapter.tasks) == 0)
    await asyncio.wait_for(q.app.manager.drain(), 10)


async def test_unsigned_op13_gets_401_and_no_signature(qq: Any) -> None:
    q, url = await start_webhook(qq)
    validation = {"op": 13, "d": {"plain_token": "Arq0D5A61EgUu4OxUvOp", "event_ts": "1725442341"}}
    status, body = await q.platform.send_webhook(url, validation, sign=False)
    assert status == 401 and "signature" not in body
    status, body = await q.platform.send_webhook(url, validation, bad_signature=True)
    assert status == 401 and "signature" not in body
    assert (await q.platform.validate_webhook(url))["ok"]  # the platform's own, signed, validation still works


async def test_op13_signing_oracle_attack_chain_is_refused(qq: Any, fake_llm: FakeOpenAI) -> None:
    q, url = await start_webhook(qq, manager_openids=[ADMIN])
    platform = q.platform
    # 1. The attacker writes the event it wants executed: an admin command from a manager.
    forged = json.dumps(platform.c2c_event(ADMIN, ADMIN_COMMAND), ensure_ascii=False)
    timestamp = str(int(time.time()))
    # 2. It asks the endpoint to sign it, as op 13's plain_token with event_ts = the header timestamp:
    #    the answer's signature would be over timestamp + forged event, exactly what events are checked with.
    oracle = json.dumps({"op": 13, "d": {"plain_token": forged, "event_ts": timestamp}}).encode()
    oracle_status, answer = await platform.post_raw(url, oracle, headers(timestamp))
    stolen = str(json.loads(answer).get("signature", "")) if oracle_status == 200 else ""
    # 3. It sends the forged event with the signature it got, or any other.
    replays = [await platform.post_raw(url, forged.encode(), headers(timestamp, sig)) for sig in (stolen, "00" * 64)]
    await settle(q)
    assert oracle_status == 401 and b"signature" not in answer
    assert [status for status, _ in replays] == [401, 401]
    assert not fake_llm.requests and not platform.messages
    assert await q.app.admin.limit_for("user", "default") is None
    # The same command, really sent by the platform, does run: the checks above are not vacuous.
    status, _ = await platform.send_webhook(url, platform.c2c_event(ADMIN, ADMIN_COMMAND))
    assert status == 200
    await platform.wait_messages(1, timeout=10)
    assert await q.app.admin.limit_for("user", "default") == 0


async def test_timestamps_more_than_five_minutes_off_are_refused(qq: Any, fake_llm: FakeOpenAI) -> None:
    q, url = await start_webhook(qq)
    platform, webhook = q.platform, q.adapter.webhook
    now = int(time.time())
    for skew in (-301, 301, -86_400):
        status, _ = await platform.send_webhook(url, platform.c2c_event("U1", "过期"), timestamp=str(now + skew))
        assert status == 401, skew
    for bad in ("", "abc", "1.7e9", "-1"):
        status, _ = await platform.send_webhook(url, platform.c2c_event("U1", "坏时间"), timestamp=bad)
        assert status == 401, bad
    webhook.clock = lambda: time.time() + 400  # the bot's clock is what the window is measured against
    status, _ = await platform.send_webhook(url, platform.c2c_event("U1", "钟不准"))
    assert status == 401
    webhook.clock = time.time
    status, _ = await platform.send_webhook(url, platform.c2c_event("U1", "刚好"), timestamp=str(now - 290))
    assert status == 200
    [reply] = await platform.wait_messages(1, timeout=10)
    assert reply["body"]["content"] == "echo: 刚好"
    await settle(q)
    assert len(fake_llm.requests) == 1


async def test_replayed_callback_after_a_restart_is_answered_once(qq: Any, fake_llm: FakeOpenAI) -> None:
    q, url = await start_webhook(qq)
    platform = q.platform
    body = json.dumps(platform.c2c_event("U1", "只答一次"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    captured = headers(timestamp, platform.sign(timestamp, body))
    status, _ = await platform.post_raw(url, body, captured)
    assert status == 200
    await platform.wait_messages(1, timeout=10)
    await q.app.stop()
    q.app = await start_bot(q.config)  # same config, same database; the fixture stops this one
    status, _ = await platform.post_raw(url, body, captured)
    assert status == 200  # acknowledged, so the platform does not redeliver it, but not answered
    await settle(q)
    status, _ = await platform.send_webhook(url, platform.c2c_event("U1", "新消息"))
    await platform.wait_messages(2, timeout=10)
    await settle(q)
    assert [m["body"]["content"] for m in platform.messages] == ["echo: 只答一次", "echo: 新消息"]
    assert len(fake_llm.requests) == 2 and not platform.rejected


async def test_hostile_headers_and_bodies_get_4xx_never_5xx(qq: Any, fake_llm: FakeOpenAI) -> None:
    q, url = await start_webhook(qq)
    platform = q.platform
    body = json.dumps(platform.c2c_event("U1", "头")).encode()
    timestamp = str(int(time.time()))
    signature = platform.sign(timestamp, body)
    ff = b"\xff\xfe\x00"[:2]
    for name in (b"X-Signature-Ed25519", b"X-Signature-Timestamp"):
        hostile = [(n, ff if n == name else v) for n, v in headers(timestamp, signature)]
        assert (await platform.post_raw(url, body, hostile))[0] == 401, name
        hostile = [(n, v + ff if n == name else v) for n, v in headers(timestamp, signature)]
        assert (await platform.post_raw(url, body, hostile))[0] == 401, name
    # Bytes in headers the webhook does not read change nothing: the request is still the platform's.
    for name in (b"Authorization", b"User-Agent", b"X-Bot-Appid"):
        status, _ = await platform.post_raw(url, body, [*headers(timestamp, signature), (name, b"QQBot " + ff)])
        assert status == 200, name
    deep = b"[" * 100_000 + b"]" * 100_000
    assert (await platform.post_raw(url, deep, headers(timestamp)))[0] == 401  # was 500 before the signature check
    assert (await platform.post_raw(url, deep, headers(timestamp, platform.sign(timestamp, deep))))[0] == 400
    bad_utf8 = b'{"op": 0, "t": "C2C_MESSAGE_CREATE", "d": {"content": "\xc3\x28"}}'
    assert (await platform.post_raw(url, bad_utf8, headers(timestamp)))[0] == 401
    assert (await platform.post_raw(url, bad_utf8, headers(timestamp, platform.sign(timestamp, bad_utf8))))[0] == 400
    await settle(q)
    [reply] = platform.messages  # only the signed one with harmless extra headers, answered once
    assert reply["body"]["content"] == "echo: 头" and len(fake_llm.requests) == 1


async def test_bodies_over_one_megabyte_are_refused_before_they_are_read(qq: Any) -> None:
    q, url = await start_webhook(qq)
    platform = q.platform
    timestamp = str(int(time.time()))
    # Only the headers are sent: a 413 proves the body was never waited for.
    status, _ = await platform.post_raw(url, b"", [*headers(timestamp), (b"Content-Length", b"2000000")])
    assert status == 413
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17)) + b"0\r\n\r\n"
    status, _ = await platform.post_raw(url, chunked, [*headers(timestamp), (b"Transfer-Encoding", b"chunked")])
    assert status == 413
    status, _ = await platform.send_webhook(url, platform.c2c_event("U1", "还能用"))
    assert status == 200
    await platform.wait_messages(1, timeout=10)


async def test_picture_server_answers_hostile_requests_with_4xx(qq: Any) -> None:
    port = free_port()
    resource = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    q: QQ = await qq(resource=resource)
    platform = q.platform
    url = f"http://127.0.0.1:{port}/qqbot-files/missing.png"
    status, _ = await platform.post_raw(url, b"x" * 5000, [(b"Authorization", b"\xff\xfe")])
    assert 400 <= status < 500
    assert {link.name: link.state for link in q.adapter.links} == {
        "QQ picture server": LinkState.LISTENING,
        "QQ gateway shard 0": LinkState.UP,
    }


async def test_webhook_listener_is_reported_for_health(qq: Any) -> None:
    q, url = await start_webhook(qq)
    [listener] = q.app.statuses()[0].links
    assert listener.name == "QQ webhook" and listener.state is LinkState.LISTENING and listener.last_event is None
    await q.platform.send_webhook(url, q.platform.c2c_event("U1", "在吗"))
    assert listener.last_event is not None and q.app.statuses()[0].healthy


def test_fake_platform_signs_like_the_bot_checks() -> None:
    platform = FakeQQ("1", "DG5g3B4j9X2KOErG")
    from adapters.qqbot.signing import key_from_secret, verify

    assert verify(key_from_secret("DG5g3B4j9X2KOErG"), platform.sign("1725442341", b"{}"), "1725442341", b"{}")
