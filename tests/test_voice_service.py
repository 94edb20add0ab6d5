"""VoiceService end to end on 127.0.0.1 (fake OpenAI, fake QQ media server, real codecs); voice names;
what is read aloud (with Hypothesis)."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from core.config import OpenAIAccount, OpenAISettings, Settings, VoiceSettings
from core.message import Voice
from llm.images import ImageFetcher
from tests.conftest import eventually
from tests.fakes.image_server import FakeImageServer
from tests.fakes.openai_server import FakeOpenAI, speech_seconds
from tests.test_voice_codec import tone
from voice import codec
from voice.errors import VoiceError
from voice.service import MAX_CONCURRENT, VoiceService
from voice.text import speakable, split_spoken
from voice.voices import EDGE_VOICES, alias, resolve

KEY = "sk-voice-secret-0001"


def settings_for(fake: FakeOpenAI, **voice: object) -> Settings:
    account = OpenAIAccount(api_key=SecretStr(KEY), api_endpoint=fake.base_url)
    return Settings(openai=OpenAISettings(accounts=[account]), voice=VoiceSettings(**voice))  # type: ignore[arg-type]


@pytest.fixture
async def service(fake_llm: FakeOpenAI) -> AsyncIterator[VoiceService]:
    fetcher = ImageFetcher(max_bytes=512 * 1024, timeout=2.0)
    voices = VoiceService(settings_for(fake_llm, stt_model="whisper-1", tts_engine="openai"), fetcher)
    yield voices
    await voices.close()
    await fetcher.close()


SILK = codec.pcm_to_silk(tone(1.2))


def uploaded_seconds(fake: FakeOpenAI) -> float:
    with wave.open(io.BytesIO(fake.transcription_requests[-1]["file"])) as wav:
        return wav.getnframes() / wav.getframerate()


# --- transcribe ---------------------------------------------------------------------------------


async def test_transcribe_from_url(service: VoiceService, fake_llm: FakeOpenAI, media: FakeImageServer) -> None:
    url = media.put("voice.silk", SILK) + "?rkey=secret-token"
    assert await service.transcribe(Voice(url=url)) == "你好"
    assert abs(uploaded_seconds(fake_llm) - 1.2) < 0.1


@pytest.mark.parametrize("prefix", ["", "base64://", "data:audio/silk;base64,"])
async def test_transcribe_from_base64(service: VoiceService, fake_llm: FakeOpenAI, prefix: str) -> None:
    fake_llm.transcript = "打开灯"
    assert await service.transcribe(Voice(base64=prefix + base64.b64encode(SILK).decode())) == "打开灯"
    assert abs(uploaded_seconds(fake_llm) - 1.2) < 0.1


async def test_local_paths_are_never_read(service: VoiceService, fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    # a path names a file on the protocol program's side; a peer must not make the bot read local files
    path = tmp_path / "voice.silk"
    path.write_bytes(SILK)
    for voice in (Voice(path=str(path)), Voice(url=path.as_uri()), Voice()):
        with pytest.raises(VoiceError) as caught:
            await service.transcribe(voice)
        assert caught.value.kind == "download"
    assert not fake_llm.transcription_requests


@pytest.mark.parametrize("path", ["/big.png", "/notimage", "/missing", "/slow.png"])
async def test_download_limits(
    service: VoiceService, fake_llm: FakeOpenAI, media: FakeImageServer, path: str, log_lines: list[str]
) -> None:
    with pytest.raises(VoiceError) as caught:
        await service.transcribe(Voice(url=f"{media.base_url}{path}?rkey=secret-token"))
    assert caught.value.kind == "download"
    assert "secret-token" not in str(caught.value)
    assert fake_llm.transcription_requests == []
    assert any("voice from 127.0.0.1 not used" in line for line in log_lines)
    assert not any("secret-token" in line or path in line for line in log_lines)


async def test_bad_base64_and_undecodable_audio(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    for voice in (Voice(base64="!!!not base64"), Voice(base64=base64.b64encode(b"garbage" * 20).decode())):
        with pytest.raises(VoiceError) as caught:
            await service.transcribe(voice)
        assert caught.value.kind == "audio"
    assert fake_llm.transcription_requests == []


async def test_disabled_directions(fake_llm: FakeOpenAI) -> None:
    fetcher = ImageFetcher()
    voices = VoiceService(settings_for(fake_llm), fetcher)
    assert not voices.stt_enabled and not voices.tts_enabled
    with pytest.raises(VoiceError) as caught:
        await voices.transcribe(Voice(base64=base64.b64encode(SILK).decode()))
    assert caught.value.kind == "disabled"
    with pytest.raises(VoiceError):
        await voices.speak("你好", "", "silk")
    assert voices.summary() == "语音识别：未启用\n语音合成：未启用"
    assert voices.offered() == [] and voices.default_voice == ""
    voices.apply(settings_for(fake_llm, stt_model="whisper-1", tts_engine="edge"))
    assert voices.stt_enabled and voices.tts_enabled and voices.default_voice == "zh-CN-XiaoxiaoNeural"
    await voices.close()
    await fetcher.close()


# --- speak --------------------------------------------------------------------------------------


async def test_speak_silk_for_qq(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    text = "今天的天气很好，我们出去走走吧。"
    voice = await service.speak(text, "", "silk")
    silk = base64.b64decode(voice.base64, validate=True)
    assert silk.startswith(b"\x02#!SILK_V3")
    length = codec.seconds(codec.to_pcm(silk))
    assert abs(length - speech_seconds(text)) < 0.2
    assert voice.length == math.ceil(speech_seconds(text)) == 2  # 1.28 s, rounded up
    assert fake_llm.speech_requests[0]["body"]["voice"] == "alloy"


async def test_speak_mp3_and_speakable_text(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    voice = await service.speak("**你好** 见 https://example.com/a?token=x\n```\ncode\n```", "nova", "mp3")
    mp3 = base64.b64decode(voice.base64, validate=True)
    assert codec.sniff(mp3) == "mp3"
    sent = fake_llm.speech_requests[0]["body"]
    assert sent["input"] == "你好 见 （链接）\n（代码略）" and sent["voice"] == "nova"
    assert abs(codec.seconds(codec.to_pcm(mp3)) - speech_seconds(sent["input"])) < 0.2
    assert voice.length >= 1


async def test_speak_errors(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    for text, fmt, kind in [("   ", "silk", "empty"), ("😀 **", "mp3", "empty"), ("hi", "ogg", "bad_request")]:
        with pytest.raises(VoiceError) as caught:
            await service.speak(text, "", fmt)
        assert caught.value.kind == kind
    assert fake_llm.speech_requests == []
    fake_llm.fail_next(500)
    with pytest.raises(VoiceError) as caught:
        await service.speak("你好", "", "silk")
    assert caught.value.kind == "server"


async def test_health_counters_move(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    await service.transcribe(Voice(base64=base64.b64encode(SILK).decode()))
    await service.speak("你好", "", "silk")
    fake_llm.fail_next(429)
    with pytest.raises(VoiceError):
        await service.speak("你好", "", "silk")
    health = service.health()
    assert health["stt"] | {"last_ok_at": 0, "last_latency_ms": 0} == {
        "enabled": True,
        "engine": "whisper-1",
        "ok": 1,
        "failed": 0,
        "last_error": "",
        "last_ok_at": 0,
        "last_failed_at": 0.0,
        "last_latency_ms": 0,
    }
    assert health["stt"]["last_ok_at"] > 0 and health["stt"]["last_latency_ms"] >= 0
    assert (health["tts"]["ok"], health["tts"]["failed"], health["tts"]["last_error"]) == (1, 1, "rate_limit")
    assert health["tts"]["engine"] == "openai" and health["tts"]["last_failed_at"] > 0
    assert KEY not in repr(health)
    assert service.summary() == (
        "语音识别：whisper-1，正常（成功 1 次，失败 0 次）\n"
        "语音合成：openai，上次失败：rate_limit（成功 1 次，失败 1 次）"
    )


async def test_concurrent_calls_are_capped(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.0
    fake_llm.hang_next(MAX_CONCURRENT + 2)
    data = base64.b64encode(SILK).decode()
    calls = [asyncio.create_task(service.transcribe(Voice(base64=data))) for _ in range(MAX_CONCURRENT + 2)]
    await eventually(lambda: len(fake_llm.transcription_requests) >= MAX_CONCURRENT)
    # the others wait for a slot: none reaches the server while the first ones hang (watched for 0.5 s)
    for _ in range(25):
        assert len(fake_llm.transcription_requests) == MAX_CONCURRENT
        await asyncio.sleep(0.02)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_voice_names(service: VoiceService, fake_llm: FakeOpenAI) -> None:
    assert "alloy" in service.offered() and service.default_voice == "alloy"
    assert service.resolve("NOVA") == "nova" and service.resolve("xiaoxiao") is None
    service.apply(settings_for(fake_llm, tts_engine="edge", tts_voices=["zh-CN-YunxiNeural", "zh-HK-HiuGaaiNeural"]))
    assert service.offered() == ["zh-CN-YunxiNeural", "zh-HK-HiuGaaiNeural"]
    assert service.resolve("hiugaai") == "zh-HK-HiuGaaiNeural" and service.resolve("xiaoxiao") is None
    assert service.shown("zh-CN-YunxiNeural") == "yunxi"


def test_aliases() -> None:
    assert alias("zh-CN-XiaoxiaoNeural") == "xiaoxiao"
    assert alias("zh-CN-liaoning-XiaobeiNeural") == "xiaobei"
    assert alias("alloy") == "alloy" and alias("en-us") == "en-us"
    assert len({alias(v) for v in EDGE_VOICES}) == len(EDGE_VOICES)
    for full in EDGE_VOICES:
        assert resolve(alias(full).upper(), EDGE_VOICES) == full and resolve(full.lower(), EDGE_VOICES) == full
    assert resolve("", EDGE_VOICES) is None and resolve("nobody", EDGE_VOICES) is None


# --- speakable text -----------------------------------------------------------------------------


def test_split_spoken_at_sentence_ends() -> None:
    assert split_spoken("第一句。第二句！第三句很长很长", 9) == ("第一句。第二句！", "第三句很长很长")
    assert split_spoken("abcdefghij", 4) == ("abcd", "efghij")
    assert split_spoken("short.", 100) == ("short.", "")
    assert split_spoken("One. Two three four", 12) == ("One.", "Two three four")


def test_speakable_removes_markup() -> None:
    text = "# 标题\n> 引用\n- 一\n* 二\n1. 三\n[文档](https://x.y/a?b=c) 和 www.example.com 😀\n"
    text += "```py\nx = 1\n```\nsnake_case"
    assert speakable(text) == "标题\n引用\n一\n二\n1. 三\n文档 和 （链接）\n（代码略）\nsnake_case"


def _non_space(text: str) -> str:
    return "".join(text.split())


@given(st.text(max_size=400), st.integers(min_value=-2, max_value=500))
def test_split_spoken_loses_nothing(text: str, cap: int) -> None:
    spoken, rest = split_spoken(text, cap)
    assert _non_space(spoken + rest) == _non_space(text)
    assert len(spoken) <= max(cap, 0)


@given(st.text(alphabet=st.sampled_from(list("ab #*_`>-[]()!\n。.:/httpsw😀")), max_size=300))
def test_speakable_never_raises(text: str) -> None:
    spoken = speakable(text)
    assert spoken == spoken.strip() and "```" not in spoken and "😀" not in spoken
