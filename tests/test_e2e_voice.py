"""Voice end to end on every protocol's fake: a voice message in, its transcript in the model request, a silk
voice answer out; voice commands; v2's 切换语音; failed transcription and synthesis; group voices.

Each protocol's peer (fake Mirai, OneBot, Milky, Satori, QQ official) delivers a real 1.5 s silk tone, served by
a local file server (inline for Mirai); the fake OpenAI server transcribes it and speaks the answer as a tone
whose length depends on the text, so the silk the peer receives can be measured against the TTS request.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.qqbot import adapter as qqbot_adapter
from bot import App
from tests.conftest import BOT_QQ, VERIFY_KEY, eventually, free_port, mirai_url, start_bot
from tests.fakes.image_server import FakeImageServer
from tests.fakes.milky_server import FakeMilky
from tests.fakes.milky_server import record_segment as milky_record
from tests.fakes.milky_server import sent_text as milky_text
from tests.fakes.milky_server import sent_voices as milky_voices
from tests.fakes.mirai_peer import FakeMirai, friend_message, friend_voice
from tests.fakes.mirai_peer import sent_text as mirai_text
from tests.fakes.mirai_peer import sent_voices as mirai_voices
from tests.fakes.onebot_impl import FakeOneBot
from tests.fakes.onebot_impl import record_segment as onebot_record
from tests.fakes.onebot_impl import sent_text as onebot_text
from tests.fakes.onebot_impl import sent_voices as onebot_voices
from tests.fakes.openai_server import FakeOpenAI, speech_seconds
from tests.fakes.qq_official import FakeQQ, voice_attachment
from tests.fakes.satori_server import FakeSatori, audio_element
from tests.fakes.satori_server import sent_voices as satori_voices
from voice.codec import PCM_RATE, pcm_to_silk, seconds, sniff, to_pcm
from voice.text import speakable
from voice.voices import OPENAI_VOICES

USER = 20001
GROUP = 30001
IMPL_QQ = 10002  # the bot's account on the OneBot / Milky / Satori fakes
TOKEN = "voice-e2e-token"
APPID = "102000001"
SECRET = "qq-bot-secret-for-tests"
QQ_USER = "U1"  # QQ official addresses people by openid
VOICE_SECONDS = 1.5
TOLERANCE = 0.15
TIMEOUT = 15.0
PROTOCOLS = ["mirai", "onebot", "milky", "satori", "qqbot"]
MARK = "[语音] "

VOICE_CONFIG: dict[str, Any] = {"stt_model": "whisper-1", "tts_engine": "openai", "tts_model": "tts-1"}


def _tone(duration: float = VOICE_SECONDS, frequency: float = 440.0) -> bytes:
    """A sine tone as 16-bit mono PCM at the codec's rate."""
    count = int(duration * PCM_RATE)
    samples = (int(12000 * math.sin(2 * math.pi * frequency * i / PCM_RATE)) for i in range(count))
    return struct.pack(f"<{count}h", *samples)


SILK = pcm_to_silk(_tone())


def config(voice_mode: str, **voice: Any) -> dict[str, Any]:
    """The config tables of a voice test: transcription and OpenAI speech on the fake's first account."""
    return {"voice": VOICE_CONFIG | voice, "response": {"voice_mode": voice_mode}}


def duration(audio: bytes) -> float:
    """How long `audio` (any format the codec reads) plays, in seconds."""
    return seconds(to_pcm(audio))


# --- one peer per protocol --------------------------------------------------------------------------------------


class Peer:
    """A started bot and the fake protocol program it talks to, seen as one private chat with USER."""

    name = ""

    def __init__(self, app: App, config: Path, media: FakeImageServer) -> None:
        self.app = app
        self.config = config
        self.media = media
        self.ids = 100

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    async def voice(self, audio: bytes) -> None:
        """USER sends a voice message holding `audio`."""
        raise NotImplementedError

    async def text(self, text: str) -> None:
        """USER sends a text message."""
        raise NotImplementedError

    def texts(self) -> list[str]:
        """The text of every message the bot sent that had any, in order."""
        raise NotImplementedError

    def voices(self) -> list[bytes]:
        """The bytes of every voice the bot sent, in order."""
        raise NotImplementedError

    async def stop(self) -> None:
        await self.app.stop()

    async def restart(self) -> None:
        """Stop the bot and start it again from the same config file (so on the same database)."""
        await self.app.stop()
        self.app = await start_bot(self.config)
        await self.connected()

    async def connected(self) -> None:
        await eventually(lambda: self.app.adapters[self.name].connected, timeout=TIMEOUT)


class MiraiPeer(Peer):
    """Fake mirai-api-http dialling the bot by reverse WS; voices arrive inline (base64)."""

    name = "mirai"
    mirai: FakeMirai

    def __init__(self, app: App, config: Path, media: FakeImageServer) -> None:
        super().__init__(app, config, media)
        self.earlier: list[dict[str, Any]] = []  # the commands of connections before a restart

    async def connected(self) -> None:
        self.mirai = FakeMirai(mirai_url(self.app), VERIFY_KEY, BOT_QQ)
        await self.mirai.connect()

    async def restart(self) -> None:
        self.earlier += self.mirai.commands
        await self.mirai.close()
        await super().restart()

    async def voice(self, audio: bytes) -> None:
        await self.mirai.push(friend_voice(USER, self.next_id(), data=audio, length=2))

    async def text(self, text: str) -> None:
        await self.mirai.push(friend_message(USER, text, self.next_id()))

    def _sends(self) -> list[dict[str, Any]]:
        commands = [*self.earlier, *self.mirai.commands]
        return [c for c in commands if str(c.get("command", "")).startswith("send")]

    def texts(self) -> list[str]:
        return [t for t in map(mirai_text, self._sends()) if t]

    def voices(self) -> list[bytes]:
        return [v for c in self._sends() for v in mirai_voices(c)]

    async def stop(self) -> None:
        await self.mirai.close()
        await super().stop()


class OneBotPeer(Peer):
    """Fake NapCat serving forward WS; voices are `record` segments with a download URL."""

    name = "onebot"
    impl: FakeOneBot

    async def voice(self, audio: bytes) -> None:
        url = self.media.put(f"onebot-{self.next_id()}.amr", audio)
        await self.impl.push(self.impl.private_message(USER, [onebot_record(url, len(audio))], self.next_id()))

    async def text(self, text: str) -> None:
        segment = {"type": "text", "data": {"text": text}}
        await self.impl.push(self.impl.private_message(USER, [segment], self.next_id()))

    async def group_voice(self, audio: bytes) -> None:
        url = self.media.put(f"onebot-{self.next_id()}.amr", audio)
        await self.impl.push(self.impl.group_message(GROUP, USER, [onebot_record(url, len(audio))], self.next_id()))

    async def group_text_at(self, text: str) -> None:
        await self.impl.push(self.impl.group_message(GROUP, USER, f"[CQ:at,qq={IMPL_QQ}] {text}", self.next_id()))

    def _sends(self) -> list[dict[str, Any]]:
        return [a for a in self.impl.actions if str(a["action"]).startswith("send_")]

    def texts(self) -> list[str]:
        return [t for t in map(onebot_text, self._sends()) if t]

    def voices(self) -> list[bytes]:
        return [v for a in self._sends() for v in onebot_voices(a)]

    async def stop(self) -> None:
        await super().stop()
        await self.impl.close()


class MilkyPeer(Peer):
    """Fake Milky with events by WS; voices are `record` segments with a temporary URL."""

    name = "milky"
    impl: FakeMilky

    async def voice(self, audio: bytes) -> None:
        url = self.media.put(f"milky-{self.next_id()}.silk", audio)
        seq = self.next_id()
        await self.impl.push(self.impl.message_event("friend", USER, USER, [milky_record(url, 2)], seq))

    async def text(self, text: str) -> None:
        segment = {"type": "text", "data": {"text": text}}
        await self.impl.push(self.impl.message_event("friend", USER, USER, [segment], self.next_id()))

    def _sends(self) -> list[dict[str, Any]]:
        return [c for c in self.impl.calls if str(c["api"]).startswith("send_")]

    def texts(self) -> list[str]:
        return [t for t in map(milky_text, self._sends()) if t]

    def voices(self) -> list[bytes]:
        return [v for c in self._sends() for v in milky_voices(c)]

    async def stop(self) -> None:
        await super().stop()
        await self.impl.stop()


_AUDIO_ELEMENT = re.compile(r"<audio\s[^>]*/>")


class SatoriPeer(Peer):
    """Fake LLOneBot speaking Satori; voices are `<audio>` elements with a download URL."""

    name = "satori"
    server: FakeSatori

    async def voice(self, audio: bytes) -> None:
        url = self.media.put(f"satori-{self.next_id()}.silk", audio)
        await self.server.push(self._event(audio_element(url)))

    async def text(self, text: str) -> None:
        await self.server.push(self._event(text))

    def _event(self, content: str) -> dict[str, Any]:
        return self.server.message_event(f"private:{USER}", str(USER), content, str(self.next_id()))

    def _contents(self) -> list[dict[str, Any]]:
        return [c for c in self.server.calls if c["api"] == "message.create"]

    def texts(self) -> list[str]:
        contents = (str(c["body"].get("content", "")) for c in self._contents())
        return [t for t in (_AUDIO_ELEMENT.sub("", c) for c in contents) if t]

    def voices(self) -> list[bytes]:
        return [v for c in self._contents() for v in satori_voices(c)]

    async def stop(self) -> None:
        await super().stop()
        await self.server.stop()


class QQPeer(Peer):
    """Fake QQ open platform; a voice arrives as an attachment URL, and the silk answer is fetched by
    the platform from the bot's resource server (`[qqbot.resource] public_url`)."""

    name = "qqbot"
    platform: FakeQQ

    async def connected(self) -> None:
        await self.platform.wait_ready(1, timeout=TIMEOUT)

    async def restart(self) -> None:
        ready = len(self.platform.identifies)
        await self.app.stop()
        self.app = await start_bot(self.config)
        await eventually(lambda: len(self.platform.identifies) > ready, timeout=TIMEOUT)

    async def voice(self, audio: bytes) -> None:
        url = self.media.put(f"qq-{self.next_id()}.silk", audio)
        await self.platform.push_c2c(QQ_USER, "", attachments=[voice_attachment(url)])

    async def text(self, text: str) -> None:
        await self.platform.push_c2c(QQ_USER, text)

    def texts(self) -> list[str]:
        bodies = (m["body"] for m in self.platform.messages)
        return [str(b.get("content", "")) for b in bodies if b.get("msg_type") != 7 and b.get("content")]

    def voices(self) -> list[bytes]:
        return self.platform.fetched(3)

    async def stop(self) -> None:
        await super().stop()
        await self.platform.stop()


# --- starting a bot per protocol -------------------------------------------------------------------------------

Writer = Callable[..., Path]
Start = Callable[[str, dict[str, Any]], Awaitable[Peer]]


async def _start_mirai(write: Writer, extra: dict[str, Any], media: FakeImageServer) -> Peer:
    path = write(extra)
    peer = MiraiPeer(await start_bot(path), path, media)
    await peer.connected()
    return peer


async def _start_onebot(write: Writer, extra: dict[str, Any], media: FakeImageServer) -> Peer:
    impl = FakeOneBot(IMPL_QQ, access_token=TOKEN)
    section = {"ws_url": await impl.serve_forward(), "access_token": TOKEN}
    path = write({"mirai": None, "onebot": section, **extra})
    peer = OneBotPeer(await start_bot(path), path, media)
    peer.impl = impl
    await peer.connected()
    return peer


async def _start_milky(write: Writer, extra: dict[str, Any], media: FakeImageServer) -> Peer:
    impl = FakeMilky(IMPL_QQ, access_token=TOKEN)
    section = {"url": await impl.start(), "access_token": TOKEN, "event_transport": "ws"}
    path = write({"mirai": None, "milky": section, **extra})
    peer = MilkyPeer(await start_bot(path), path, media)
    peer.impl = impl
    await peer.connected()
    return peer


async def _start_satori(write: Writer, extra: dict[str, Any], media: FakeImageServer) -> Peer:
    server = FakeSatori(str(IMPL_QQ), token=TOKEN)
    section = {"url": await server.start(), "token": TOKEN}
    path = write({"mirai": None, "satori": section, **extra})
    peer = SatoriPeer(await start_bot(path), path, media)
    peer.server = server
    await peer.connected()
    return peer


async def _start_qqbot(write: Writer, extra: dict[str, Any], media: FakeImageServer) -> Peer:
    platform = FakeQQ(APPID, SECRET)
    platform.heartbeat_interval_ms = 300
    base = await platform.start()
    port = free_port()
    section: dict[str, Any] = {"appid": APPID, "secret": SECRET, "api_base": base}
    section |= {"token_url": f"{base}/app/getAppAccessToken"}
    section["resource"] = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    path = write({"mirai": None, "qqbot": section, **extra})
    peer = QQPeer(await start_bot(path), path, media)
    peer.platform = platform
    await peer.connected()
    return peer


STARTERS = {
    "mirai": _start_mirai,
    "onebot": _start_onebot,
    "milky": _start_milky,
    "satori": _start_satori,
    "qqbot": _start_qqbot,
}


@pytest.fixture
async def start(write_config: Writer, media: FakeImageServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """`await start(protocol, config_tables)`: a bot on that protocol's fake; all are stopped at the end."""
    monkeypatch.setattr(qqbot_adapter, "SHARD_STAGGER", 0.2)
    started: list[Peer] = []

    async def run(protocol: str, extra: dict[str, Any]) -> Peer:
        peer = await STARTERS[protocol](write_config, extra, media)
        started.append(peer)
        return peer

    yield run
    for peer in reversed(started):
        await peer.stop()


# --- assertions --------------------------------------------------------------------------------------------------


def last_user_content(fake_llm: FakeOpenAI) -> str:
    """The text of the last user message of the last chat request."""
    [*_, message] = [m for m in fake_llm.requests[-1]["body"]["messages"] if m.get("role") == "user"]
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def assert_spoken_answer(audio: bytes, fake_llm: FakeOpenAI) -> None:
    """`audio` is QQ silk as long as the fake's speech of the text the last TTS request got."""
    assert sniff(audio) == "silk"
    said = fake_llm.speech_requests[-1]["body"]["input"]
    assert abs(duration(audio) - speech_seconds(said)) <= TOLERANCE, (duration(audio), said)


async def answered(peer: Peer, texts: int = 0, voices: int = 0) -> None:
    """Wait until the bot has sent at least `texts` texts and `voices` voices in all."""
    await eventually(lambda: len(peer.texts()) >= texts and len(peer.voices()) >= voices, timeout=TIMEOUT)


async def ping(peer: Peer) -> str:
    """Ask `ping` and return the bot's answer (commands answer at once, after what is already sent)."""
    seen = len(peer.texts())
    await peer.text("ping")
    await answered(peer, texts=seen + 1)
    return peer.texts()[seen]


# --- 1. voice in, transcript to the model, voice out ------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_voice_in_transcript_to_model_voice_out(start: Start, protocol: str, fake_llm: FakeOpenAI) -> None:
    fake_llm.transcript = "今天天气怎么样"
    peer = await start(protocol, config("voice"))
    await peer.voice(SILK)
    await answered(peer, voices=1)

    [transcription] = fake_llm.transcription_requests
    assert transcription["model"] == "whisper-1" and transcription["file"][:4] == b"RIFF"
    assert abs(duration(transcription["file"]) - VOICE_SECONDS) <= TOLERANCE
    [chat] = fake_llm.requests
    assert MARK + fake_llm.transcript in last_user_content(fake_llm), chat["body"]["messages"]
    [speech] = fake_llm.speech_requests
    assert speech["body"]["model"] == "tts-1" and fake_llm.transcript in speech["body"]["input"]
    [spoken] = peer.voices()
    assert_spoken_answer(spoken, fake_llm)
    # voice mode: the answer was not also sent as text (the next text the bot sends is ping's)
    assert "当前语音：alloy" in await ping(peer)
    assert len(peer.texts()) == 1 and len(peer.voices()) == 1


# --- 2. a command said aloud ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_command_by_voice_is_answered_as_text(start: Start, protocol: str, fake_llm: FakeOpenAI) -> None:
    fake_llm.transcript = "重置会话"
    peer = await start(protocol, config("voice"))
    await peer.voice(SILK)
    await answered(peer, texts=1)
    assert peer.texts() == [peer.app.settings.response.reset]
    assert len(fake_llm.transcription_requests) == 1
    assert fake_llm.requests == [] and fake_llm.speech_requests == [] and peer.voices() == []


# --- 3. v2's 切换语音 --------------------------------------------------------------------------------------------


async def command(peer: Peer, text: str) -> str:
    """Send `text` and return the bot's one text answer to it."""
    seen = len(peer.texts())
    await peer.text(text)
    await answered(peer, texts=seen + 1)
    return peer.texts()[seen]


@pytest.mark.parametrize("protocol", ["mirai", "onebot"])
async def test_switch_voice_commands_survive_a_restart(start: Start, protocol: str, fake_llm: FakeOpenAI) -> None:
    peer = await start(protocol, config("off"))
    response = peer.app.settings.response
    assert await command(peer, "切换语音 alloy") == response.voice_switched.format(voice="alloy")

    # the session chose a voice: its answers come as text and then voice ("both")
    await peer.text("你好")
    await answered(peer, texts=2, voices=1)
    assert peer.texts()[1] == "echo: 你好"
    assert_spoken_answer(peer.voices()[0], fake_llm)
    assert "当前语音：alloy" in await ping(peer)

    offered = "、".join(OPENAI_VOICES)
    assert await command(peer, "切换语音 nobody") == response.voice_not_found.format(voice="nobody", voices=offered)

    await peer.restart()  # the choice is kept in the database
    assert "当前语音：alloy" in await ping(peer)
    assert await command(peer, "切换语音 关闭") == response.voice_off
    assert await command(peer, "还在吗") == "echo: 还在吗"
    assert "当前语音：无" in await ping(peer)  # after the answer: no voice followed it
    assert len(peer.voices()) == 1 and len(fake_llm.speech_requests) == 1


# --- 4. a voice that could not be understood --------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("failure", ["server_error", "undecodable"])
async def test_failed_transcription_says_so_and_the_bot_goes_on(
    start: Start, protocol: str, failure: str, fake_llm: FakeOpenAI
) -> None:
    peer = await start(protocol, config("off"))
    if failure == "server_error":
        fake_llm.fail_next(500)  # the transcription is the first request: one try, so it takes this
        await peer.voice(SILK)
    else:
        await peer.voice(b"#!SILK_V3" + bytes(64))  # labelled silk, but no frame decodes
    await answered(peer, texts=1)
    assert peer.texts() == [peer.app.settings.response.voice_not_understood]
    assert fake_llm.requests == []
    assert len(fake_llm.transcription_requests) == (1 if failure == "server_error" else 0)

    assert await command(peer, "你好") == "echo: 你好"


# --- 5. a voice answer that could not be synthesized ----------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_failed_synthesis_answers_as_text(start: Start, protocol: str, fake_llm: FakeOpenAI) -> None:
    # the speech endpoint gets its own key, which the fake refuses: chat and transcription still work
    fake_llm.fail_key("sk-tts-broken", 500)
    peer = await start(protocol, config("voice", tts_api_key="sk-tts-broken"))
    await peer.voice(SILK)
    await answered(peer, texts=1)
    assert peer.texts() == [f"echo: {MARK}{fake_llm.transcript}"]
    assert len(fake_llm.speech_requests) == 1 and peer.voices() == []


# --- 6. voices in groups ----------------------------------------------------------------------------------------


async def test_group_voice_is_not_transcribed_when_an_at_is_required(start: Start, fake_llm: FakeOpenAI) -> None:
    peer = await start("onebot", config("off") | {"trigger": {"require_mention": "at"}})
    assert isinstance(peer, OneBotPeer)
    await peer.group_voice(SILK)
    await peer.group_text_at("有人吗")  # events are handled in order: once this is answered, the voice was seen
    await answered(peer, texts=1)
    # a transcription would run in a task of its own: none is left running, and none was made
    await eventually(lambda: len(peer.app.manager.tasks) == 0, timeout=TIMEOUT)
    assert fake_llm.transcription_requests == [] and peer.media.hits == {}
    assert peer.texts() == ["echo: 有人吗"] and len(fake_llm.requests) == 1


async def test_group_voice_is_transcribed_when_no_mention_is_required(start: Start, fake_llm: FakeOpenAI) -> None:
    peer = await start("onebot", config("off") | {"trigger": {"require_mention": "none"}})
    assert isinstance(peer, OneBotPeer)
    await peer.group_voice(SILK)
    await answered(peer, texts=1)
    assert len(fake_llm.transcription_requests) == 1
    assert MARK + fake_llm.transcript in last_user_content(fake_llm)
    assert peer.texts() == [f"echo: {MARK}{fake_llm.transcript}"]


# --- 7. how much is spoken, where it is stored, platforms without voice ---------------------------------------


async def test_a_long_answer_is_spoken_up_to_the_cap_and_the_rest_is_text(start: Start, fake_llm: FakeOpenAI) -> None:
    first, second = "第一句话比较短。", "第二句话就不会读出来了，它作为文字发送。"
    fake_llm.reply_fn = lambda body: first + second
    peer = await start("mirai", config("voice", tts_max_chars=12))
    await peer.text("讲长一点")
    await answered(peer, texts=1, voices=1)
    [speech] = fake_llm.speech_requests
    assert speech["body"]["input"] == first  # cut at the sentence end within the cap
    assert_spoken_answer(peer.voices()[0], fake_llm)
    assert peer.texts() == [second]


async def test_the_transcript_is_stored_as_the_users_turn(start: Start, fake_llm: FakeOpenAI) -> None:
    fake_llm.transcript = "记住我的名字是小明"
    peer = await start("onebot", config("off"))
    await peer.voice(SILK)
    await answered(peer, texts=1)
    turns = await peer.app.store.window(f"qq:private:{USER}", 10_000)
    assert [turn.role for turn in turns] == ["user", "assistant"]
    assert turns[0].content == MARK + fake_llm.transcript


async def test_a_platform_without_voice_gets_text_and_one_log_line(
    start: Start, fake_llm: FakeOpenAI, log_lines: list[str]
) -> None:
    peer = await start("mirai", config("voice"))
    peer.app.adapters["mirai"].voice_format = ""  # type: ignore[misc]  # as the terminal console is
    await peer.text("你好")
    await answered(peer, texts=1)
    assert peer.voices() == [] and fake_llm.speech_requests == []
    assert sum("cannot send voice messages" in line for line in log_lines) == 1


async def test_streamed_parts_go_out_early_and_the_voice_follows(start: Start, fake_llm: FakeOpenAI) -> None:
    fake_llm.reply_fn = lambda body: "第一段。\n\n第二段。"
    fake_llm.chunk_chars, fake_llm.chunk_delay = 2, 0.05
    tables = config("both") | {"openai": {"gpt_params": {"stream": True}}}
    tables["response"] |= {"buffer_delay": 0.1}
    peer = await start("mirai", tables)
    await peer.text("分段回答")
    await answered(peer, texts=2, voices=1)
    assert "\n\n".join(peer.texts()) == "第一段。\n\n第二段。"  # both parts as text, the first one early
    [speech] = fake_llm.speech_requests
    assert speech["body"]["input"] == speakable("第一段。\n\n第二段。")  # the whole answer spoken after them
