"""A fake mirai-api-http reverse-ws client: dials the bot, answers verify and commands, pushes events."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from typing import Any

import aiohttp


class FakeMirai:
    """Behaves like mirai-api-http's reverse-ws adapter, as seen from the bot.

    It waits for the bot's verify frame, answers it (bare `{"code":1}` on a wrong key, as the
    real one does), answers every command with a success and a fresh messageId, and records
    the commands so tests can read what the bot sent.
    """

    def __init__(self, url: str, verify_key: str, qq: int, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.verify_key = verify_key
        self.qq = qq
        self.headers = headers or {}
        self.commands: list[dict[str, Any]] = []
        self.verify_frames: list[dict[str, Any]] = []
        self.verified = asyncio.Event()
        self.command_code = 0
        self.nickname = "小助手"
        self.swallow_next = 0
        self.connections = 0  # sockets opened to the bot so far (a second one means a reconnect)
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, wait_verified: bool = True, timeout: float = 5.0) -> None:
        """Dial the bot (retrying while it is not listening yet) and handle its frames; again to reconnect."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self._ws = await self._session.ws_connect(self.url, headers=self.headers)
                break
            except aiohttp.ClientConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self.connections += 1
        self.verified.clear()
        self._reader = asyncio.create_task(self._read(self._ws))
        if wait_verified:
            await asyncio.wait_for(self.verified.wait(), timeout)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if not isinstance(frame, dict):
                continue
            if frame.get("command") == "verify":
                await self._on_verify(ws, frame)
                continue
            reply: dict[str, Any] = {"code": self.command_code, "msg": "success" if self.command_code == 0 else "error"}
            if frame.get("command", "").startswith("send"):
                reply["messageId"] = next(self._message_ids)
                if self.swallow_next > 0:  # mirai's sign that QQ swallowed the message
                    self.swallow_next -= 1
                    reply["messageId"] = -1
            if frame.get("command") == "botProfile":
                # answered like mirai-api-http (the profile itself, no code) and not recorded as a reply
                await ws.send_str(json.dumps({"syncId": frame["syncId"], "data": {"nickname": self.nickname}}))
                continue
            async with self._changed:
                self.commands.append(frame)
                self._changed.notify_all()
            await ws.send_str(json.dumps({"syncId": frame["syncId"], "data": reply}))

    async def _on_verify(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        self.verify_frames.append(frame)
        content = frame.get("content") or {}
        if content.get("verifyKey") != self.verify_key:
            await ws.send_str(json.dumps({"code": 1, "msg": "Verify Key错误"}))
        elif content.get("qq") != self.qq:
            await ws.send_str(json.dumps({"code": 2, "msg": "指定Bot不存在"}))
        else:
            await ws.send_str(json.dumps({"syncId": frame["syncId"], "data": {"code": 0, "session": "SESSION"}}))
            self.verified.set()

    async def push(self, event: dict[str, Any]) -> None:
        """Deliver one event as mirai-api-http does (syncId -1)."""
        await self.send_raw(json.dumps({"syncId": "-1", "data": event}, ensure_ascii=False))

    async def send_raw(self, data: str | bytes) -> None:
        """Send any text frame, well-formed or not; bytes go out unchanged as a TEXT frame (even invalid UTF-8)."""
        assert self._ws is not None
        if isinstance(data, bytes):
            await self._ws.send_frame(data, aiohttp.WSMsgType.TEXT)
        else:
            await self._ws.send_str(data)

    @property
    def socket(self) -> aiohttp.ClientWebSocketResponse | None:
        """The current connection to the bot (tests compare it to see that no reconnect happened)."""
        return self._ws

    @property
    def closed(self) -> bool:
        return self._ws is None or self._ws.closed

    async def wait_commands(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `count` commands have arrived; returns all of them."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.commands) >= count), timeout)
        return list(self.commands)

    async def close(self) -> None:
        """Hang up like a restarting mirai-api-http."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def sent_text(command: dict[str, Any]) -> str:
    """The Plain text of a send command's messageChain ("" for other commands)."""
    chain = command.get("content", {}).get("messageChain", [])
    return "".join(element.get("text", "") for element in chain if element.get("type") == "Plain")


def sent_voices(command: dict[str, Any]) -> list[bytes]:
    """The bytes of every inline (`base64`) Voice element of a send command's messageChain."""
    chain = command.get("content", {}).get("messageChain", [])
    return [base64.b64decode(el["base64"]) for el in chain if el.get("type") == "Voice" and el.get("base64")]


def friend_voice(user: int, message_id: int, url: str = "", data: bytes = b"", length: int = 0) -> dict[str, Any]:
    """A FriendMessage holding one voice, as mirai-api-http sends it: a download `url`, or the bytes in `base64`."""
    voice = {
        "type": "Voice",
        "voiceId": "23C477720A37FEB6A9EE4BCCF654014F.amr",
        "url": url or None,
        "path": None,
        "base64": base64.b64encode(data).decode() if data else None,
        "length": length,
    }
    return {
        "type": "FriendMessage",
        "sender": {"id": user, "nickname": "friend", "remark": ""},
        "messageChain": [{"type": "Source", "id": message_id, "time": 1700000000}, voice],
    }


def friend_message(user: int, text: str, message_id: int, nickname: str = "friend") -> dict[str, Any]:
    """A FriendMessage event."""
    return {
        "type": "FriendMessage",
        "sender": {"id": user, "nickname": nickname, "remark": ""},
        "messageChain": [{"type": "Source", "id": message_id, "time": 1700000000}, {"type": "Plain", "text": text}],
    }


def group_message(
    group: int,
    user: int,
    text: str,
    message_id: int,
    at: int | None = None,
    quote: dict[str, Any] | None = None,
    name: str = "member",
) -> dict[str, Any]:
    """A GroupMessage event, optionally @-ing `at` and quoting an earlier message."""
    chain: list[dict[str, Any]] = [{"type": "Source", "id": message_id, "time": 1700000000}]
    if quote is not None:
        chain.append({"type": "Quote", **quote})
    if at is not None:
        chain.append({"type": "At", "target": at, "display": "@bot"})
    chain.append({"type": "Plain", "text": f" {text}" if at is not None else text})
    return {
        "type": "GroupMessage",
        "sender": {
            "id": user,
            "memberName": name,
            "specialTitle": "",
            "permission": "MEMBER",
            "joinTimestamp": 0,
            "lastSpeakTimestamp": 0,
            "muteTimeRemaining": 0,
            "group": {"id": group, "name": "test group", "permission": "MEMBER"},
        },
        "messageChain": chain,
    }
