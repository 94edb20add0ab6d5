"""Voice messages in and out on every protocol adapter, through real sockets on 127.0.0.1.

Out: a reply `(Voice(base64=<silk>, length=2),)` reaches each fake peer in the protocol's own form, and the bytes the
peer holds decode as the same two seconds of sound. In: each peer delivers a voice whose URL points at a local file
server (or whose bytes are inline), and the adapter's event holds a Voice that yields those bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from adapters.base import Adapter
from adapters.console.adapter import ConsoleAdapter
from adapters.http.adapter import HttpApiAdapter
from adapters.http.settings import HttpSettings
from adapters.milky import codec as milky_codec
from adapters.milky.adapter import MilkyAdapter
from adapters.milky.settings import MilkySettings
from adapters.mirai import codec as mirai_codec
from adapters.mirai.forward import MiraiForward
from adapters.mirai.settings import MiraiSettings
from adapters.onebot import codec as onebot_codec
from adapters.onebot.settings import OneBotSettings
from adapters.onebot.transports import OneBotForward
from adapters.qqbot import adapter as qqbot_adapter
from adapters.qqbot import codec as qqbot_codec
from adapters.qqbot.adapter import QQBotAdapter
from adapters.qqbot.settings import QQBotSettings
from adapters.satori import codec as satori_codec
from adapters.satori.adapter import SatoriAdapter
from adapters.satori.settings import SatoriSettings
from adapters.webchat.adapter import WebChatAdapter
from core.errors import AdapterError
from core.event import ChatType, Event, MessageEvent, Target
from core.message import Text, Voice
from tests.conftest import eventually, free_port
from tests.fakes.image_server import FakeImageServer
from tests.fakes.milky_server import FakeMilky
from tests.fakes.milky_server import record_segment as milky_record
from tests.fakes.milky_server import sent_voices as milky_voices
from tests.fakes.mirai_peer import friend_voice
from tests.fakes.mirai_peer import sent_voices as mirai_voices
from tests.fakes.mirai_server import FakeMiraiServer
from tests.fakes.onebot_impl import FakeOneBot
from tests.fakes.onebot_impl import record_segment as onebot_record
from tests.fakes.onebot_impl import sent_voices as onebot_voices
from tests.fakes.qq_official import FakeQQ, voice_attachment
from tests.fakes.satori_server import FakeSatori, audio_element, sent_audio_types
from tests.fakes.satori_server import sent_voices as satori_voices
from voice.codec import PCM_RATE, pcm_to_mp3, pcm_to_silk, seconds, sniff, to_pcm

BOT = 2976543210
USER = 20001
SECONDS = 2.0
TOLERANCE = 0.1
Start = Callable[[Adapter], Awaitable[Adapter]]


def _tone(duration: float = SECONDS, frequency: float = 440.0) -> bytes:
    """A sine tone as 16-bit mono PCM at the codec's rate."""
    count = int(duration * PCM_RATE)
    samples = (int(12000 * math.sin(2 * math.pi * frequency * i / PCM_RATE)) for i in range(count))
    return struct.pack(f"<{count}h", *samples)


SILK = pcm_to_silk(_tone())
SILK_B64 = base64.b64encode(SILK).decode()
REPLY = (Voice(base64=SILK_B64, length=2),)


def _lasts_two_seconds(data: bytes) -> None:
    assert abs(seconds(to_pcm(data)) - SECONDS) <= TOLERANCE


class Inbox:
    """The events an adapter hands on, awaitable."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def sink(self, event: Event) -> None:
        self.events.append(event)

    async def voice(self, count: int = 1) -> Voice:
        """The Voice of the `count`-th message event, once it has arrived."""
        await eventually(lambda: len(self._messages()) >= count)
        voices = [seg for seg in self._messages()[count - 1].message if isinstance(seg, Voice)]
        assert len(voices) == 1, self._messages()[count - 1].message
        return voices[0]

    def _messages(self) -> list[MessageEvent]:
        return [event for event in self.events if isinstance(event, MessageEvent)]


async def _download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


@pytest.fixture
async def running() -> AsyncIterator[Start]:
    """Start an adapter and wait for its link; every adapter started is stopped at the end."""
    started: list[Adapter] = []

    async def start(adapter: Adapter) -> Adapter:
        await adapter.start()
        started.append(adapter)
        assert await adapter.wait_connected(10), f"{adapter.protocol} never connected"
        return adapter

    yield start
    for adapter in reversed(started):
        await adapter.stop()


# --- voice_format ---------------------------------------------------------------------------------------------


def test_each_platform_says_which_voice_it_sends() -> None:
    for cls in (MiraiForward, OneBotForward, MilkyAdapter, SatoriAdapter, QQBotAdapter):
        assert cls.voice_format == "silk", cls
    assert HttpApiAdapter.voice_format == "mp3"
    assert ConsoleAdapter.voice_format == "" and WebChatAdapter.voice_format == "mp3"


# --- codecs ---------------------------------------------------------------------------------------------------


def test_mirai_voice_codec() -> None:
    assert mirai_codec.encode_chain(REPLY) == [{"type": "Voice", "base64": SILK_B64}]
    for wrapped in (f"base64://{SILK_B64}", f"data:audio/silk;base64,{SILK_B64}"):
        assert mirai_codec.encode_chain((Voice(base64=wrapped),)) == [{"type": "Voice", "base64": SILK_B64}]
    assert mirai_codec.encode_chain((Voice(url="http://x/v.amr", base64=SILK_B64),)) == [
        {"type": "Voice", "url": "http://x/v.amr"}
    ]
    decoded = mirai_codec.decode_chain(friend_voice(1, 2, url="http://x/v.amr", data=SILK, length=2)["messageChain"])
    [voice] = decoded.message
    assert voice == Voice(id="23C477720A37FEB6A9EE4BCCF654014F.amr", url="http://x/v.amr", base64=SILK_B64, length=2)


def test_onebot_record_codec() -> None:
    assert onebot_codec.encode_message(REPLY) == [{"type": "record", "data": {"file": f"base64://{SILK_B64}"}}]
    assert onebot_codec.decode_message([onebot_record("http://x/v")]) == (
        Voice(id="5E8A0B2C7D3F4E1A9B6C.amr", url="http://x/v"),
    )
    inline = onebot_codec.decode_message([{"type": "record", "data": {"file": f"base64://{SILK_B64}"}}])
    assert inline == (Voice(base64=SILK_B64),)
    by_url = onebot_codec.decode_message([{"type": "record", "data": {"file": "https://x/v.silk"}}])
    assert by_url == (Voice(id="https://x/v.silk", url="https://x/v.silk"),)
    # A CQ string carries the same record.
    assert onebot_codec.decode_message("[CQ:record,file=a.amr,url=http://x/a&#44;b]") == (
        Voice(id="a.amr", url="http://x/a,b"),
    )


def test_milky_record_codec() -> None:
    assert milky_codec.encode_segments(REPLY) == [{"type": "record", "data": {"uri": f"base64://{SILK_B64}"}}]
    assert milky_codec.decode_segments([milky_record("http://x/v", 2)]) == (
        Voice(id="rec-1", url="http://x/v", length=2),
    )


def test_satori_audio_codec() -> None:
    # Tencent's silk starts with a 0x02 byte before "#!SILK_V3": still labelled silk.
    assert SILK[:1] == b"\x02" and sniff(SILK) == "silk"
    assert satori_codec.encode_content(REPLY) == f'<audio src="data:audio/silk;base64,{SILK_B64}"/>'
    plain = base64.b64encode(b"#!SILK_V3" + bytes(20)).decode()
    assert satori_codec.encode_content((Voice(base64=plain),)) == f'<audio src="data:audio/silk;base64,{plain}"/>'
    assert satori_codec.decode_content(audio_element(f"data:audio/silk;base64,{SILK_B64}")) == (Voice(base64=SILK_B64),)
    assert satori_codec.decode_content(audio_element("http://x/v?a=1&b=2")) == (Voice(url="http://x/v?a=1&b=2"),)


@pytest.mark.parametrize(
    ("attachment", "url"),
    [
        (voice_attachment("https://x/silk", "https://x/v.wav"), "https://x/v.wav"),  # the WAV is preferred
        (voice_attachment("https://x/silk"), "https://x/silk"),
        (
            voice_attachment("//multimedia.nt.qq.com.cn/a", "multimedia.nt.qq.com.cn/a.wav"),
            "https://multimedia.nt.qq.com.cn/a.wav",
        ),
        ({"content_type": "voice", "url": "", "asr_refer_text": "你好"}, None),  # nothing to download: dropped
    ],
)
def test_qqbot_voice_attachment(attachment: dict[str, Any], url: str | None) -> None:
    d = {"id": "m", "content": "", "author": {"user_openid": "U"}, "attachments": [attachment]}
    event = qqbot_codec.decode_message({"t": "C2C_MESSAGE_CREATE", "d": d}, "qqbot", "BOT")
    assert event is not None
    assert event.message == (() if url is None else (Voice(url=url),))


# --- through the fakes ----------------------------------------------------------------------------------------


async def test_mirai_voice_out_and_in(running: Start, media: FakeImageServer) -> None:
    server = FakeMiraiServer("verify-key", BOT)
    await server.start()
    inbox = Inbox()
    try:
        settings = MiraiSettings(qq=BOT, api_key="verify-key", ws_url=server.ws_url, http_url=server.base_url)
        adapter = await running(MiraiForward("mirai", settings, inbox.sink))
        await adapter.send(Target("mirai", ChatType.PRIVATE, str(USER)), REPLY)
        [command] = await server.wait_commands(1)
        assert command["command"] == "sendFriendMessage"
        [sent] = mirai_voices(command)
        _lasts_two_seconds(sent)

        url = media.put("mirai.amr", SILK)
        await server.push(friend_voice(USER, 7, url=url, length=2))
        assert await _download((await inbox.voice(1)).url) == SILK
        await server.push(friend_voice(USER, 8, data=SILK))
        assert base64.b64decode((await inbox.voice(2)).base64) == SILK
    finally:
        await server.stop()


async def test_onebot_record_out_and_in(running: Start, media: FakeImageServer) -> None:
    impl = FakeOneBot(BOT, access_token="tok")
    inbox = Inbox()
    try:
        settings = OneBotSettings(qq=BOT, ws_url=await impl.serve_forward(), access_token="tok")
        adapter = await running(OneBotForward("onebot", settings, inbox.sink))
        await adapter.send(Target("onebot", ChatType.GROUP, str(USER), "30001"), REPLY)
        await eventually(lambda: any(a["action"].startswith("send_") for a in impl.actions))
        [action] = [a for a in impl.actions if a["action"].startswith("send_")]
        [sent] = onebot_voices(action)
        _lasts_two_seconds(sent)

        url = media.put("napcat.amr", SILK)
        await impl.push(impl.private_message(USER, [onebot_record(url, len(SILK))], 41))
        assert await _download((await inbox.voice(1)).url) == SILK
        inline = [{"type": "record", "data": {"file": f"base64://{SILK_B64}"}}]
        await impl.push(impl.group_message(30001, USER, inline, 42))
        assert base64.b64decode((await inbox.voice(2)).base64) == SILK
    finally:
        await impl.stop_forward()


async def test_milky_record_out_and_in(running: Start, media: FakeImageServer) -> None:
    fake = FakeMilky(BOT, access_token="tok")
    inbox = Inbox()
    try:
        settings = MilkySettings(url=await fake.start(), access_token="tok")
        adapter = await running(MilkyAdapter("milky", settings, inbox.sink))
        await adapter.send(Target("milky", ChatType.PRIVATE, str(USER)), REPLY)
        await eventually(lambda: any(c["api"].startswith("send_") for c in fake.calls))
        [call] = [c for c in fake.calls if c["api"].startswith("send_")]
        [sent] = milky_voices(call)
        _lasts_two_seconds(sent)

        url = media.put("milky.silk", SILK)
        await fake.push(fake.message_event("friend", USER, USER, [milky_record(url, 2)], 51))
        voice = await inbox.voice(1)
        assert voice.length == 2 and await _download(voice.url) == SILK
    finally:
        await fake.stop()


async def test_satori_audio_out_and_in(running: Start, media: FakeImageServer) -> None:
    fake = FakeSatori(str(BOT), token="tok")
    inbox = Inbox()
    try:
        settings = SatoriSettings(url=await fake.start(), token="tok")
        adapter = await running(SatoriAdapter("satori", settings, inbox.sink))
        await adapter.send(Target("satori", ChatType.PRIVATE, str(USER)), REPLY)
        await eventually(lambda: any(c["api"] == "message.create" for c in fake.calls))
        [call] = [c for c in fake.calls if c["api"] == "message.create"]
        assert sent_audio_types(call) == ["audio/silk"]
        [sent] = satori_voices(call)
        _lasts_two_seconds(sent)

        url = media.put("satori.silk", SILK)
        await fake.push(fake.message_event(f"private:{USER}", str(USER), audio_element(url), "m1"))
        assert await _download((await inbox.voice(1)).url) == SILK
        inline = audio_element(f"data:audio/silk;base64,{SILK_B64}")
        await fake.push(fake.message_event(f"private:{USER}", str(USER), inline, "m2"))
        assert base64.b64decode((await inbox.voice(2)).base64) == SILK
    finally:
        await fake.stop()


APPID = "102000001"
SECRET = "qq-bot-secret-for-tests"


def _qq_settings(platform: FakeQQ, resource: dict[str, Any] | None = None) -> QQBotSettings:
    base = platform.base_url
    extra = {"resource": resource} if resource else {}
    return QQBotSettings(appid=APPID, secret=SECRET, api_base=base, token_url=f"{base}/app/getAppAccessToken", **extra)


@pytest.fixture
async def platform(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeQQ]:
    monkeypatch.setattr(qqbot_adapter, "SHARD_STAGGER", 0.2)
    fake = FakeQQ(APPID, SECRET)
    fake.heartbeat_interval_ms = 300
    await fake.start()
    yield fake
    await fake.stop()


async def test_qqbot_voice_in_then_silk_out_through_the_resource_server(
    platform: FakeQQ, running: Start, media: FakeImageServer
) -> None:
    port = free_port()
    resource = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    inbox = Inbox()
    adapter = await running(QQBotAdapter("qqbot", _qq_settings(platform, resource), inbox.sink))
    await platform.wait_ready(1, timeout=10)
    silk_url = media.put("qq.silk", SILK)
    wav_url = media.put("qq.wav", b"RIFF-not-decoded-here")
    await platform.push_c2c("U1", "", attachments=[voice_attachment(silk_url, wav_url, "你好")])
    voice = await inbox.voice(1)
    assert voice == Voice(url=wav_url)  # the WAV rendering is preferred; the transcript is kept nowhere
    assert await _download(voice.url) == media.files["qq.wav"][0]

    await adapter.send(Target("qqbot", ChatType.PRIVATE, "U1"), REPLY)
    [reply] = await platform.wait_messages(1, timeout=10)
    assert reply["body"]["msg_type"] == 7 and reply["body"]["media"]["file_info"].startswith("fi-")
    [upload] = platform.uploads
    assert upload["body"]["file_type"] == 3 and upload["url"].startswith(f"http://127.0.0.1:{port}/qqbot-files/")
    [fetched] = platform.fetched(3)
    assert fetched == SILK  # Tencent fetched exactly the silk from the bot's resource server
    _lasts_two_seconds(fetched)


async def test_qqbot_voice_without_a_place_to_serve_it_raises(platform: FakeQQ, running: Start) -> None:
    inbox = Inbox()
    adapter = await running(QQBotAdapter("qqbot", _qq_settings(platform), inbox.sink))
    await platform.wait_ready(1, timeout=10)
    await platform.push_c2c("U1", "说句话")
    await eventually(lambda: len(inbox.events) == 1)
    with pytest.raises(AdapterError, match="public_url or \\[qqbot\\] uploader"):
        await adapter.send(Target("qqbot", ChatType.PRIVATE, "U1"), REPLY)
    assert platform.uploads == [] and platform.messages == []
    # The reply slot was not used up: the text the caller falls back to is the first reply.
    await adapter.send(Target("qqbot", ChatType.PRIVATE, "U1"), (Text("你好"),))
    [reply] = await platform.wait_messages(1, timeout=10)
    assert (reply["body"]["msg_seq"], reply["body"]["content"]) == (1, "你好")


async def test_http_api_voice_is_an_mp3_data_uri(running: Start) -> None:
    inbox = Inbox()
    port = free_port()
    adapter = await running(HttpApiAdapter("http", HttpSettings(host="127.0.0.1", port=port), inbox.sink))
    mp3 = pcm_to_mp3(_tone())
    async with aiohttp.ClientSession() as session:
        body = {"session_id": "friend-1", "username": "甲", "message": "说句话"}
        answer = asyncio.create_task(session.post(f"http://127.0.0.1:{port}/v1/chat", json=body))
        await eventually(lambda: len(inbox.events) == 1)
        [event] = inbox.events
        assert isinstance(event, MessageEvent)
        target = Target("http", event.chat_type, event.user_id, event.group_id, message_id=event.message_id)
        await adapter.send(target, (Voice(base64=base64.b64encode(mp3).decode(), length=2),))
        adapter.answered(event)
        response = await answer
        result = json.loads(await response.text())
        response.release()
    [uri] = result["voice"]
    head, _, data = uri.partition(",")
    assert head == "data:audio/mpeg;base64"
    decoded = base64.b64decode(data)
    assert sniff(decoded) == "mp3"
    _lasts_two_seconds(decoded)
