"""Transcriber against the fake OpenAI server on 127.0.0.1: real codecs, real multipart, real errors."""

from __future__ import annotations

import io
import wave

import pytest
from pydantic import SecretStr

from core.config import OpenAIAccount, OpenAISettings, VoiceSettings
from tests.fakes.openai_server import FakeOpenAI
from tests.test_voice_codec import encoded, tone
from voice.codec import pcm_to_silk
from voice.errors import VoiceError
from voice.stt import Transcriber, resolve_connection


def wav_seconds(data: bytes) -> tuple[float, int, int]:
    """(seconds, rate, channels) of a WAV upload."""
    with wave.open(io.BytesIO(data)) as wav:
        return wav.getnframes() / wav.getframerate(), wav.getframerate(), wav.getnchannels()


def openai_for(fake: FakeOpenAI, key: str = "sk-chat-key-0001", **account: str) -> OpenAISettings:
    return OpenAISettings(
        accounts=[OpenAIAccount(api_key=SecretStr(key), api_endpoint=fake.base_url, **account)]  # type: ignore[arg-type]
    )


async def transcribe(fake: FakeOpenAI, audio: bytes, **voice: object) -> str:
    settings = VoiceSettings(stt_model="whisper-1", **voice)  # type: ignore[arg-type]
    transcriber = Transcriber(settings, openai_for(fake))
    try:
        return await transcriber.transcribe(audio)
    finally:
        await transcriber.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda: pcm_to_silk(tone(1.5)),
        lambda: encoded(tone(1.5), "amr", "libopencore_amrnb", 8000),
        lambda: encoded(tone(1.5), "mp3", "libmp3lame", 16000),
    ],
    ids=["silk", "amr", "mp3"],
)
async def test_voice_is_uploaded_as_16k_mono_wav_of_its_length(fake_llm: FakeOpenAI, make: object) -> None:
    fake_llm.transcript = "  今天天气怎么样？ \n"
    text = await transcribe(fake_llm, make(), stt_language="zh")  # type: ignore[operator]
    assert text == "今天天气怎么样？"
    [request] = fake_llm.transcription_requests
    assert request["model"] == "whisper-1" and request["language"] == "zh"
    assert request["response_format"] == "json"
    assert request["authorization"] == "Bearer sk-chat-key-0001"
    length, rate, channels = wav_seconds(request["file"])
    assert (rate, channels) == (16000, 1)
    assert abs(length - 1.5) < 0.15


async def test_language_left_out_when_not_set(fake_llm: FakeOpenAI) -> None:
    await transcribe(fake_llm, pcm_to_silk(tone(0.5)))
    assert fake_llm.transcription_requests[0]["language"] is None


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "auth"), (403, "auth"), (429, "rate_limit"), (500, "server"), (400, "bad_request")]
)
async def test_http_errors_map_to_kinds(fake_llm: FakeOpenAI, status: int, kind: str) -> None:
    fake_llm.fail_next(status)
    with pytest.raises(VoiceError) as caught:
        await transcribe(fake_llm, pcm_to_silk(tone(0.5)))
    assert caught.value.kind == kind
    assert "sk-chat-key" not in str(caught.value)


async def test_rejected_key_is_never_in_the_error(fake_llm: FakeOpenAI) -> None:
    fake_llm.fail_key("sk-chat-key-0001", 401)  # the fake echoes the full key in its message
    with pytest.raises(VoiceError) as caught:
        await transcribe(fake_llm, pcm_to_silk(tone(0.5)))
    assert caught.value.kind == "auth" and "sk-chat-key-0001" not in str(caught.value)


async def test_hung_server_times_out_within_stt_timeout(fake_llm: FakeOpenAI) -> None:
    fake_llm.hang_next()
    with pytest.raises(VoiceError) as caught:
        await transcribe(fake_llm, pcm_to_silk(tone(0.5)), stt_timeout=0.5)
    assert caught.value.kind == "timeout"


async def test_empty_transcript_is_an_error(fake_llm: FakeOpenAI) -> None:
    fake_llm.transcript = "   "
    with pytest.raises(VoiceError) as caught:
        await transcribe(fake_llm, pcm_to_silk(tone(0.5)))
    assert caught.value.kind == "empty"


@pytest.mark.parametrize("audio", [b"", b"<html>not found</html>", b"#!SILK_V3" + b"\xff" * 40, b"RIFF" + b"\0" * 60])
async def test_undecodable_audio_makes_no_request(fake_llm: FakeOpenAI, audio: bytes) -> None:
    with pytest.raises(VoiceError) as caught:
        await transcribe(fake_llm, audio)
    assert caught.value.kind == "audio"
    assert fake_llm.transcription_requests == []


@pytest.mark.parametrize("frames", [b"", b"\0\0" * 16000, b"\x05\0\xfb\xff" * 8000], ids=["empty", "zero", "hiss"])
async def test_empty_or_silent_wav_is_audio_error(fake_llm: FakeOpenAI, frames: bytes) -> None:
    output = io.BytesIO()
    with wave.open(output, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(frames)
    with pytest.raises(VoiceError) as caught:
        await transcribe(fake_llm, output.getvalue())
    assert caught.value.kind == "audio" and fake_llm.transcription_requests == []


async def test_unreachable_endpoint_is_network(fake_llm: FakeOpenAI) -> None:
    base = fake_llm.base_url
    await fake_llm.stop()
    settings = VoiceSettings(stt_model="whisper-1", stt_api_endpoint=base, stt_api_key=SecretStr("sk-own"))
    transcriber = Transcriber(settings, OpenAISettings())
    with pytest.raises(VoiceError) as caught:
        await transcriber.transcribe(pcm_to_silk(tone(0.3)))
    await transcriber.close()
    assert caught.value.kind == "network"


async def test_own_endpoint_and_key_win_over_the_account(fake_llm: FakeOpenAI) -> None:
    other = FakeOpenAI()
    await other.start()
    try:
        settings = VoiceSettings(
            stt_model="FunAudioLLM/SenseVoiceSmall", stt_api_endpoint=other.base_url, stt_api_key=SecretStr("sk-stt")
        )
        transcriber = Transcriber(settings, openai_for(fake_llm))
        assert await transcriber.transcribe(pcm_to_silk(tone(0.5))) == "你好"
        await transcriber.close()
    finally:
        await other.stop()
    assert fake_llm.transcription_requests == []
    assert other.transcription_requests[0]["authorization"] == "Bearer sk-stt"
    assert other.transcription_requests[0]["model"] == "FunAudioLLM/SenseVoiceSmall"


async def test_named_account_is_used(fake_llm: FakeOpenAI) -> None:
    other = FakeOpenAI()
    await other.start()
    try:
        openai = OpenAISettings(
            accounts=[
                OpenAIAccount(api_key=SecretStr("sk-first"), api_endpoint=fake_llm.base_url, name="chat"),
                OpenAIAccount(api_key=SecretStr("sk-audio"), api_endpoint=other.base_url, name="audio"),
            ]
        )
        transcriber = Transcriber(VoiceSettings(stt_model="whisper-1", stt_account="audio"), openai)
        await transcriber.transcribe(pcm_to_silk(tone(0.5)))
        await transcriber.close()
    finally:
        await other.stop()
    assert [r["authorization"] for r in other.transcription_requests] == ["Bearer sk-audio"]


def test_connection_resolution_rules() -> None:
    openai = OpenAISettings(
        api_endpoint="http://v2-style.example/v1",
        accounts=[
            OpenAIAccount(api_key=SecretStr("sk-a"), name="a", proxy="socks5://127.0.0.1:1080"),
            OpenAIAccount(api_key=SecretStr("sk-b"), name="b", api_endpoint="http://b.example/v1"),
        ],
    )
    first = resolve_connection(SecretStr(""), "", "", openai)
    assert (first.api_key.get_secret_value(), first.endpoint, first.proxy) == (
        "sk-a",
        "http://v2-style.example/v1",
        "socks5://127.0.0.1:1080",
    )
    named = resolve_connection(SecretStr(""), "", "b", openai)
    assert (named.api_key.get_secret_value(), named.endpoint, named.proxy) == ("sk-b", "http://b.example/v1", "")
    own = resolve_connection(SecretStr("sk-own"), "http://own.example/v1", "", openai)
    assert (own.api_key.get_secret_value(), own.endpoint, own.proxy) == ("sk-own", "http://own.example/v1", "")
    own_via_a = resolve_connection(SecretStr(""), "http://own.example/v1", "a", openai)
    assert (own_via_a.api_key.get_secret_value(), own_via_a.proxy) == ("sk-a", "socks5://127.0.0.1:1080")
    bare = resolve_connection(SecretStr(""), "", "", OpenAISettings())
    assert bare.endpoint == "https://api.openai.com/v1" and not bare.api_key.get_secret_value()
    with pytest.raises(VoiceError) as caught:
        resolve_connection(SecretStr(""), "", "nobody", openai)
    assert caught.value.kind == "bad_request"


async def test_bad_proxy_is_bad_request_without_the_proxy_text(fake_llm: FakeOpenAI) -> None:
    transcriber = Transcriber(VoiceSettings(stt_model="whisper-1"), openai_for(fake_llm, proxy="ftp://u:secretpw@h:1"))
    with pytest.raises(VoiceError) as caught:
        await transcriber.transcribe(pcm_to_silk(tone(0.3)))
    assert caught.value.kind == "bad_request" and "secretpw" not in str(caught.value)
