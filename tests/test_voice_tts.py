"""Speakers for real: OpenAI's /audio/speech on the fake server, espeak-ng itself, and edge-tts against a
local fake of Edge's read-aloud WebSocket (written from edge-tts's own communicate.py)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import edge_tts.communicate
import pytest
from aiohttp import WSMsgType, web
from pydantic import SecretStr

from core.config import OpenAIAccount, OpenAISettings, VoiceSettings
from tests.fakes.openai_server import FakeOpenAI, speech_seconds, tone_file
from voice import codec
from voice.errors import VoiceError
from voice.tts import EdgeSpeaker, EspeakSpeaker, OpenAISpeaker, edge_rate, make_speaker

# --- OpenAI-compatible /audio/speech ------------------------------------------------------------


def openai_for(fake: FakeOpenAI) -> OpenAISettings:
    return OpenAISettings(accounts=[OpenAIAccount(api_key=SecretStr("sk-tts-key-0001"), api_endpoint=fake.base_url)])


async def speak_openai(fake: FakeOpenAI, text: str, voice: str = "", **settings: object) -> bytes:
    speaker = OpenAISpeaker(VoiceSettings(tts_engine="openai", **settings), openai_for(fake))  # type: ignore[arg-type]
    try:
        return await speaker.synthesize(text, voice)
    finally:
        await speaker.close()


async def test_openai_speaker_sends_the_fields_and_gets_decodable_audio(fake_llm: FakeOpenAI) -> None:
    text = "你好，今天天气不错。"
    audio = await speak_openai(fake_llm, text, "nova", tts_model="gpt-4o-mini-tts", tts_speed=1.25)
    [request] = fake_llm.speech_requests
    assert request["body"] == {
        "model": "gpt-4o-mini-tts",
        "input": text,
        "voice": "nova",
        "response_format": "mp3",
        "speed": 1.25,
    }
    assert request["authorization"] == "Bearer sk-tts-key-0001"
    assert codec.sniff(audio) == "mp3"
    assert abs(codec.seconds(codec.to_pcm(audio)) - speech_seconds(text)) < 0.15


async def test_openai_speaker_default_voice(fake_llm: FakeOpenAI) -> None:
    await speak_openai(fake_llm, "hi")
    await speak_openai(fake_llm, "hi", tts_voice="onyx")
    assert [r["body"]["voice"] for r in fake_llm.speech_requests] == ["alloy", "onyx"]


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "auth"), (429, "rate_limit"), (503, "server"), (400, "bad_request")]
)
async def test_openai_speaker_errors(fake_llm: FakeOpenAI, status: int, kind: str) -> None:
    fake_llm.fail_next(status)
    with pytest.raises(VoiceError) as caught:
        await speak_openai(fake_llm, "hi")
    assert caught.value.kind == kind


async def test_openai_speaker_timeout(fake_llm: FakeOpenAI) -> None:
    fake_llm.hang_next()
    with pytest.raises(VoiceError) as caught:
        await speak_openai(fake_llm, "hi", tts_timeout=0.5)
    assert caught.value.kind == "timeout"


async def test_own_endpoint_and_key(fake_llm: FakeOpenAI) -> None:
    settings = VoiceSettings(tts_engine="openai", tts_api_endpoint=fake_llm.base_url, tts_api_key=SecretStr("sk-own"))
    speaker = OpenAISpeaker(settings, OpenAISettings())
    await speaker.synthesize("hi", "")
    await speaker.close()
    assert fake_llm.speech_requests[0]["authorization"] == "Bearer sk-own"


def test_make_speaker_by_engine() -> None:
    openai = OpenAISettings()
    assert make_speaker(VoiceSettings(), openai) is None
    for engine, kind, default in [
        ("openai", OpenAISpeaker, "alloy"),
        ("edge", EdgeSpeaker, "zh-CN-XiaoxiaoNeural"),
        ("espeak", EspeakSpeaker, "cmn"),
    ]:
        speaker = make_speaker(VoiceSettings(tts_engine=engine), openai)  # type: ignore[arg-type]
        assert speaker is not None and isinstance(speaker, kind)
        assert speaker.engine == engine and speaker.default_voice == default
        assert default in speaker.builtin_voices()


# --- espeak-ng ----------------------------------------------------------------------------------

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None and not os.environ.get("CI"),
    reason="espeak-ng is not installed (apt-get install espeak-ng); CI must have it",
)


@needs_espeak
@pytest.mark.parametrize(
    ("text", "voice"), [("你好，今天天气很好，我们去公园散步吧。", "cmn"), ("Hello there, how are you today?", "en")]
)
async def test_espeak_speaks_chinese_and_english(text: str, voice: str) -> None:
    audio = await EspeakSpeaker(VoiceSettings(tts_engine="espeak")).synthesize(text, voice)
    assert codec.sniff(audio) == "wav"
    length = codec.seconds(codec.to_pcm(audio))
    assert 0.5 < length < 10, length


@needs_espeak
async def test_espeak_speed_follows_tts_speed() -> None:
    text = "This sentence is long enough to hear a difference in speed."
    slow = await EspeakSpeaker(VoiceSettings(tts_speed=0.75)).synthesize(text, "en")
    fast = await EspeakSpeaker(VoiceSettings(tts_speed=1.5)).synthesize(text, "en")
    assert codec.seconds(codec.to_pcm(slow)) > 1.5 * codec.seconds(codec.to_pcm(fast))


@needs_espeak
async def test_espeak_unknown_voice_is_bad_request() -> None:
    with pytest.raises(VoiceError) as caught:
        await EspeakSpeaker(VoiceSettings()).synthesize("hi", "nosuch")
    assert caught.value.kind == "bad_request"


def fake_command(tmp_path: Path, body: str) -> str:
    """An executable shell script standing in for espeak-ng."""
    script = tmp_path / "fake-espeak"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


async def test_text_goes_on_stdin_never_in_argv(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    wav.write_bytes(tone_file(0.5, "wav"))
    command = fake_command(tmp_path, f'printf "%s\\n" "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin\ncat {wav}\n')
    text = "--version; rm -rf / $(reboot) 你好"
    audio = await EspeakSpeaker(VoiceSettings(), command=command).synthesize(text, "")
    assert codec.sniff(audio) == "wav"
    assert (tmp_path / "stdin").read_text("utf-8") == text
    argv = (tmp_path / "argv").read_text().split("\n")
    assert text not in argv and "--stdin" in argv and "cmn" in argv


async def test_voice_looking_like_an_option_is_refused(tmp_path: Path) -> None:
    command = fake_command(tmp_path, f"touch {tmp_path}/ran\n")
    with pytest.raises(VoiceError) as caught:
        await EspeakSpeaker(VoiceSettings(), command=command).synthesize("hi", "--path=/tmp")
    assert caught.value.kind == "bad_request" and not (tmp_path / "ran").exists()


async def test_hung_command_is_killed_at_tts_timeout(tmp_path: Path) -> None:
    command = fake_command(tmp_path, f"echo $$ > {tmp_path}/pid\nexec sleep 60\n")
    started = time.monotonic()
    with pytest.raises(VoiceError) as caught:
        await EspeakSpeaker(VoiceSettings(tts_timeout=0.5), command=command).synthesize("hi", "")
    assert caught.value.kind == "timeout" and time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


async def test_missing_command_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(VoiceError) as caught:
        await EspeakSpeaker(VoiceSettings(), command=str(tmp_path / "nope")).synthesize("hi", "")
    assert caught.value.kind == "unavailable" and "espeak-ng" in caught.value.detail


# --- Edge TTS against a local fake of its WebSocket ----------------------------------------------


class FakeEdge:
    """Edge's read-aloud service as edge-tts talks to it: speech.config and ssml text frames in;
    turn.start, binary `Path:audio` frames (2-byte header length, headers, MP3) and turn.end out."""

    def __init__(self) -> None:
        self.ssml: list[str] = []
        self.mode = "speak"  # or "silent" (turn.end without audio) or "hang"
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/edge/v1", self._socket)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}/edge/v1?TrustedClientToken=test"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type != WSMsgType.TEXT or "Path:ssml" not in message.data:
                continue
            ssml = message.data.partition("\r\n\r\n")[2]
            self.ssml.append(ssml)
            if self.mode == "hang":
                await asyncio.sleep(3600)
            await socket.send_str(_text_frame("turn.start", '{"context":{"serviceTag":"fake"}}'))
            if self.mode == "speak":
                found = re.search(r"<prosody[^>]*>(.*?)</prosody>", ssml, re.DOTALL)
                spoken = found.group(1) if found else ""
                audio = tone_file(speech_seconds(spoken), "mp3")
                for start in range(0, len(audio), 4096):
                    await socket.send_bytes(_audio_frame(audio[start : start + 4096]))
                await socket.send_bytes(_audio_frame(b"", content_type=False))
            await socket.send_str(_text_frame("turn.end", "{}"))
        return socket


def _text_frame(path: str, body: str) -> str:
    return f"X-RequestId:fake\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{body}"


def _audio_frame(data: bytes, content_type: bool = True) -> bytes:
    headers = "X-RequestId:fake\r\n" + ("Content-Type:audio/mpeg\r\n" if content_type else "") + "Path:audio\r\n"
    encoded = headers.encode()
    return len(encoded).to_bytes(2, "big") + encoded + data


@pytest.fixture
async def edge(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeEdge]:
    fake = FakeEdge()
    await fake.start()
    # edge-tts builds its URL from this module constant; its session trusts the environment's proxies
    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", fake.url)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    yield fake
    await fake.stop()


async def test_edge_speaks_through_its_websocket(edge: FakeEdge) -> None:
    text = "你好，世界！"
    audio = await EdgeSpeaker(VoiceSettings(tts_engine="edge", tts_speed=1.25)).synthesize(text, "")
    [ssml] = edge.ssml
    assert "Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)" in ssml
    assert "rate='+25%'" in ssml and text in ssml
    assert codec.sniff(audio) == "mp3"
    assert abs(codec.seconds(codec.to_pcm(audio)) - speech_seconds(text)) < 0.15


async def test_edge_dialect_voice_name(edge: FakeEdge) -> None:
    await EdgeSpeaker(VoiceSettings()).synthesize("你好", "zh-CN-liaoning-XiaobeiNeural")
    assert "(zh-CN-liaoning, XiaobeiNeural)" in edge.ssml[0]


async def test_edge_without_audio_is_empty(edge: FakeEdge) -> None:
    edge.mode = "silent"
    with pytest.raises(VoiceError) as caught:
        await EdgeSpeaker(VoiceSettings()).synthesize("你好", "")
    assert caught.value.kind == "empty"


async def test_edge_hang_times_out(edge: FakeEdge) -> None:
    edge.mode = "hang"
    with pytest.raises(VoiceError) as caught:
        await EdgeSpeaker(VoiceSettings(tts_timeout=0.5)).synthesize("你好", "")
    assert caught.value.kind == "timeout"


async def test_edge_unreachable_is_network(edge: FakeEdge) -> None:
    await edge.stop()
    with pytest.raises(VoiceError) as caught:
        await EdgeSpeaker(VoiceSettings(tts_timeout=5)).synthesize("你好", "")
    assert caught.value.kind == "network"


async def test_edge_bad_voice_name_is_bad_request(edge: FakeEdge) -> None:
    with pytest.raises(VoiceError) as caught:
        await EdgeSpeaker(VoiceSettings()).synthesize("你好", "xiaoxiao")
    assert caught.value.kind == "bad_request" and edge.ssml == []


def test_edge_rate() -> None:
    assert [edge_rate(s) for s in (1.0, 1.25, 0.8, 2.0)] == ["+0%", "+25%", "-20%", "+100%"]
