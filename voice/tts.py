"""Text to speech: one small interface and its providers (OpenAI-compatible /audio/speech, Edge TTS, espeak-ng)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Protocol

import aiohttp
from loguru import logger

from core.config import OpenAISettings, VoiceSettings
from voice import voices
from voice.errors import VoiceError
from voice.stt import AudioClient, error_of, resolve_connection

log = logger.bind(adapter="voice")

ESPEAK_COMMAND = "espeak-ng"
_ESPEAK_WPM = 175  # espeak-ng's own default speed, words per minute
_ESPEAK_WPM_RANGE = (80, 450)
_STDERR_SHOWN = 200  # characters of a failing command's message kept for the log


class Speaker(Protocol):
    """One text-to-speech engine. `synthesize` gives an audio file voice.codec.to_pcm decodes."""

    engine: str
    default_voice: str

    def builtin_voices(self) -> list[str]:
        """The voices offered when `[voice] tts_voices` is empty."""
        ...

    async def synthesize(self, text: str, voice: str) -> bytes:
        """`text` spoken by `voice` ("" the default). Raises VoiceError."""
        ...

    async def close(self) -> None:
        """Release connections; the speaker may be used again afterwards."""
        ...


class OpenAISpeaker:
    """POST `<endpoint>/audio/speech` (OpenAI, SiliconFlow, a local OpenAI-compatible TTS server)."""

    engine = "openai"

    def __init__(self, voice: VoiceSettings, openai: OpenAISettings) -> None:
        self._voice = voice
        self.default_voice = voice.tts_voice or voices.OPENAI_DEFAULT
        self._client = AudioClient(
            lambda: resolve_connection(voice.tts_api_key, voice.tts_api_endpoint, voice.tts_account, openai),
            voice.tts_timeout,
            "speech",
        )

    @property
    def model(self) -> str:
        return self._voice.tts_model

    def builtin_voices(self) -> list[str]:
        return list(voices.OPENAI_VOICES)

    async def synthesize(self, text: str, voice: str) -> bytes:
        settings = self._voice
        try:
            async with asyncio.timeout(settings.tts_timeout):
                response = await self._client.get().audio.speech.create(
                    model=settings.tts_model,
                    input=text,
                    voice=voice or self.default_voice,
                    response_format="mp3",
                    speed=settings.tts_speed,
                )
                audio = await response.aread()
        except TimeoutError:
            raise VoiceError("timeout", f"no speech within {settings.tts_timeout:g}s") from None
        except Exception as exc:  # every SDK or transport failure becomes one VoiceError
            raise error_of(exc) from None
        if not audio:
            raise VoiceError("empty", "the speech endpoint sent no audio")
        return audio

    async def close(self) -> None:
        await self._client.close()


class EdgeSpeaker:
    """Microsoft Edge's read-aloud voices through the `edge-tts` package: free, no key, MP3 out."""

    engine = "edge"

    def __init__(self, voice: VoiceSettings) -> None:
        self._voice = voice
        self.default_voice = voice.tts_voice or voices.EDGE_DEFAULT

    def builtin_voices(self) -> list[str]:
        return list(voices.EDGE_VOICES)

    async def synthesize(self, text: str, voice: str) -> bytes:
        import edge_tts  # loaded on first use (about 20 MB): most bots never speak

        timeout = self._voice.tts_timeout
        try:
            communicate = edge_tts.Communicate(
                text,
                voice or self.default_voice,
                rate=edge_rate(self._voice.tts_speed),
                connect_timeout=max(1, math.ceil(timeout)),
                receive_timeout=max(1, math.ceil(timeout)),
            )
        except (TypeError, ValueError) as exc:  # a voice name edge-tts cannot parse
            raise VoiceError("bad_request", f"edge-tts refused the request: {exc}") from None
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                async for chunk in communicate.stream():
                    if chunk["type"] == "audio" and "data" in chunk:
                        chunks.append(chunk["data"])
        except TimeoutError:
            raise VoiceError("timeout", f"no speech within {timeout:g}s") from None
        except Exception as exc:  # the library's and aiohttp's errors, sorted
            raise _edge_error(exc) from None
        if not chunks:
            raise VoiceError("empty", "Edge TTS sent no audio")
        return b"".join(chunks)

    async def close(self) -> None:
        """Nothing to release: edge-tts opens one connection per call."""


def edge_rate(speed: float) -> str:
    """`tts_speed` as Edge's rate: 1.25 → "+25%", 0.8 → "-20%"."""
    return f"{round((speed - 1) * 100):+d}%"


def _edge_error(exc: BaseException) -> VoiceError:
    from edge_tts import exceptions as edge_errors

    if isinstance(exc, edge_errors.NoAudioReceived):
        return VoiceError("empty", "Edge TTS sent no audio (is the voice name right?)")
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status in (401, 403):
            return VoiceError("auth", f"Edge TTS refused the connection: HTTP {exc.status}")
        if exc.status == 429:
            return VoiceError("rate_limit", "Edge TTS: HTTP 429")
        return VoiceError("server", f"Edge TTS: HTTP {exc.status}")
    if isinstance(exc, edge_errors.EdgeTTSException):
        return VoiceError("server", f"Edge TTS: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        # only the type: aiohttp's messages carry the URL with its token
        return VoiceError("network", f"Edge TTS unreachable: {type(exc).__name__}")
    if isinstance(exc, ValueError | TypeError):
        return VoiceError("bad_request", f"edge-tts refused the request: {type(exc).__name__}")
    return VoiceError("server", f"Edge TTS: {type(exc).__name__}")


class EspeakSpeaker:
    """The offline `espeak-ng` command: robotic but always there. The text goes in on stdin, never argv."""

    engine = "espeak"

    def __init__(self, voice: VoiceSettings, command: str = ESPEAK_COMMAND) -> None:
        self._voice = voice
        self._command = command
        self.default_voice = voice.tts_voice or voices.ESPEAK_DEFAULT

    def builtin_voices(self) -> list[str]:
        return list(voices.ESPEAK_VOICES)

    def _argv(self, voice: str) -> list[str]:
        low, high = _ESPEAK_WPM_RANGE
        wpm = min(high, max(low, round(_ESPEAK_WPM * self._voice.tts_speed)))
        # -b 1: the input is UTF-8; --stdin: the text is read from standard input
        return [self._command, "--stdin", "--stdout", "-b", "1", "-v", voice, "-s", str(wpm)]

    async def synthesize(self, text: str, voice: str) -> bytes:
        voice = voice or self.default_voice
        if voice.startswith("-"):  # it is an argument: a voice must not turn into an option
            raise VoiceError("bad_request", "a voice name cannot start with '-'")
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(voice),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise VoiceError(
                "unavailable", f"{self._command} 未安装 (not installed: apt-get install espeak-ng)"
            ) from None
        except OSError as exc:
            raise VoiceError("unavailable", f"{self._command} cannot run: {type(exc).__name__}") from None
        return await self._collect(process, text)

    async def _collect(self, process: asyncio.subprocess.Process, text: str) -> bytes:
        timeout = self._voice.tts_timeout
        try:
            async with asyncio.timeout(timeout):
                audio, errors = await process.communicate(text.encode("utf-8"))
        except BaseException as exc:  # a timeout or a cancellation: the process must not outlive the call
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if isinstance(exc, TimeoutError):
                raise VoiceError("timeout", f"{self._command} took longer than {timeout:g}s") from None
            raise
        if process.returncode != 0:
            message = " ".join(errors.decode("utf-8", "replace").split())[:_STDERR_SHOWN]
            raise VoiceError("bad_request", f"{self._command} exited with {process.returncode}: {message}")
        if not audio:
            raise VoiceError("empty", f"{self._command} produced no audio")
        return audio

    async def close(self) -> None:
        """Nothing to release: one process per call."""


def make_speaker(voice: VoiceSettings, openai: OpenAISettings) -> Speaker | None:
    """The speaker `[voice] tts_engine` names, or None when it is ""."""
    if voice.tts_engine == "openai":
        return OpenAISpeaker(voice, openai)
    if voice.tts_engine == "edge":
        return EdgeSpeaker(voice)
    if voice.tts_engine == "espeak":
        return EspeakSpeaker(voice)
    return None
