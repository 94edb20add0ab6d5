"""Voice in the web console: spoken answers play on the chat page; the dashboard and `.状态` show STT/TTS health."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from core.message import Voice
from tests.conftest import metric_samples
from tests.console_client import ConsoleClient, console
from tests.fakes.openai_server import FakeOpenAI, speech_seconds
from tests.test_web_chat import events, say
from tests.test_web_console import no_secret_in
from voice.codec import PCM_RATE, pcm_to_silk, seconds, sniff, to_pcm
from voice.text import speakable

__all__ = ["console"]

VOICE = {
    "voice": {"stt_model": "whisper-1", "tts_engine": "openai", "tts_voice": "nova"},
    "response": {"voice_mode": "both"},
}


def tone(duration: float) -> bytes:
    """A 440 Hz tone of `duration` seconds as 16-bit PCM at PCM_RATE (a square wave is enough to decode)."""
    period = PCM_RATE // 440
    samples = [8000 if (i % period) < period // 2 else -8000 for i in range(int(duration * PCM_RATE))]
    return b"".join(sample.to_bytes(2, "little", signed=True) for sample in samples)


async def test_a_spoken_answer_plays_on_the_chat_page(console: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    client: ConsoleClient = await console(VOICE)
    async with events(client) as stream:
        answer = await stream.answer(await say(client, "讲个笑话"))
    messages = [data for kind, data in answer if kind == "message"]
    texts = [data["text"] for data in messages if data["text"]]
    [voice] = [uri for data in messages for uri in data["voices"]]
    assert texts == ["echo: 讲个笑话"]  # "both": the text, then the same answer spoken
    assert voice.startswith("data:audio/mpeg;base64,")
    audio = base64.b64decode(voice.split(",", 1)[1])
    assert sniff(audio) == "mp3"
    [request] = fake_llm.speech_requests
    assert request["body"]["voice"] == "nova" and request["body"]["input"] == speakable("echo: 讲个笑话")
    assert abs(seconds(to_pcm(audio)) - speech_seconds(request["body"]["input"])) < 0.15


async def test_the_dashboard_and_status_show_voice_health(console: Callable[..., Any], fake_llm: FakeOpenAI) -> None:
    client: ConsoleClient = await console(VOICE)
    status, live = await client.get("/dashboard/live")
    assert status == 200 and 'data-voice="stt"' in live and 'data-voice="tts"' in live
    assert "whisper-1" in live and "openai" in live
    service = client.app.manager.voice
    silk = Voice(base64=base64.b64encode(pcm_to_silk(tone(1.0))).decode())
    assert await service.transcribe(silk) == fake_llm.transcript
    fake_llm.fail_next(500)
    try:
        await service.transcribe(silk)
    except Exception as exc:
        assert type(exc).__name__ == "VoiceError"
    _, live = await client.get("/dashboard/live")
    stt_row = live.split('data-voice="stt"', 1)[1].split("</tr>", 1)[0]
    assert "上次失败" in stt_row and "server" in stt_row
    assert "<td>1</td>" in stt_row  # one success, one failure
    no_secret_in(live)
    async with events(client) as stream:
        answer = await stream.answer(await say(client, ".状态"))
    text = next(data["text"] for kind, data in answer if kind == "message")
    assert "语音识别：whisper-1，上次失败：server（成功 1 次，失败 1 次）" in text
    assert "语音合成：openai，尚未使用" in text
    assert metric_samples(client.app, "voice_calls") == {
        (("kind", "stt"), ("outcome", "ok")): 1.0,
        (("kind", "stt"), ("outcome", "server")): 1.0,
    }


async def test_without_voice_the_dashboard_has_no_voice_table(console: Callable[..., Any]) -> None:
    client: ConsoleClient = await console()
    _, live = await client.get("/dashboard/live")
    assert 'id="voice"' not in live
