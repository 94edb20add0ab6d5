"""The voice service the conversation layer uses: voice messages to text, answers to QQ or MP3 voices."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from loguru import logger

from core.config import Settings
from core.message import Voice
from core.metrics import OK, Metrics
from llm.images import ImageFetcher, host_of
from voice import codec, voices
from voice.errors import VoiceError
from voice.stt import Transcriber
from voice.text import speakable
from voice.tts import Speaker, make_speaker

log = logger.bind(adapter="voice")

MAX_CONCURRENT = 4  # STT calls and TTS calls each: a burst of voices must not use up the worker threads


@dataclass(slots=True)
class CallStats:
    """How one direction (stt or tts) has been doing; nothing here can hold a secret."""

    ok: int = 0
    failed: int = 0
    last_error: str = ""  # the VoiceError kind of the last failure
    last_ok_at: float = 0.0  # unix time
    last_failed_at: float = 0.0
    last_latency_ms: int = 0
    last_failed: bool = False

    def record(self, started: float, error: VoiceError | None) -> None:
        self.last_latency_ms = round((time.monotonic() - started) * 1000)
        self.last_failed = error is not None
        if error is None:
            self.ok += 1
            self.last_ok_at = time.time()
        else:
            self.failed += 1
            self.last_error = error.kind
            self.last_failed_at = time.time()


class VoiceService:
    """Transcribes voice messages (`[voice] stt_*`) and speaks answers (`tts_*`); at most
    MAX_CONCURRENT calls of each kind at once. Every public call raises only VoiceError."""

    def __init__(self, settings: Settings, fetcher: ImageFetcher, metrics: Metrics | None = None) -> None:
        self._fetcher = fetcher
        self._metrics = metrics or Metrics()
        self._stt_slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._tts_slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._stt_stats = CallStats()
        self._tts_stats = CallStats()
        self._retired: list[Callable[[], Awaitable[None]]] = []
        self._speaker: Speaker | None = None
        self._transcriber: Transcriber | None = None
        self._configure(settings)

    def _configure(self, settings: Settings) -> None:
        self._voice = settings.voice
        self._transcriber = Transcriber(settings.voice, settings.openai) if settings.voice.stt_enabled else None
        self._speaker = make_speaker(settings.voice, settings.openai)

    # --- configuration -------------------------------------------------------------------------

    @property
    def stt_enabled(self) -> bool:
        return self._transcriber is not None

    @property
    def tts_enabled(self) -> bool:
        return self._speaker is not None

    def apply(self, settings: Settings) -> None:
        """Use reloaded settings; calls in flight finish on the old clients, closed by `close()`."""
        self._retired += [c.close for c in (self._transcriber, self._speaker) if c is not None]
        self._configure(settings)

    async def close(self) -> None:
        closers = self._retired + [c.close for c in (self._transcriber, self._speaker) if c is not None]
        self._retired = []
        for close in closers:
            try:
                await close()
            except Exception as exc:  # one failing close must not keep the others open
                log.debug("closing a voice client failed: {}", type(exc).__name__)

    # --- speech to text -----------------------------------------------------------------------

    async def transcribe(self, voice: Voice) -> str:
        """The words of a voice message (from its base64, path or http(s) URL). Raises VoiceError."""
        transcriber = self._transcriber
        if transcriber is None:
            raise VoiceError("disabled", "[voice] stt_model is not set")
        async with self._call(self._stt_stats, "stt"), self._stt_slots:
            audio = await self._audio_of(voice)
            return await transcriber.transcribe(audio)

    async def _audio_of(self, voice: Voice) -> bytes:
        """The voice's bytes: inline data, or a download. A path is never read: it names a file on the
        protocol program's side (Mirai's data folder), and a peer must not make the bot read local files."""
        url = voice.url
        if voice.base64 or url.startswith(("base64://", "data:")):
            return self._from_base64(voice.base64 or url)
        if url:
            audio = await self._fetcher.fetch_bytes(url, codec.sniff, what="voice")
            if audio is None:  # the fetcher logged why, naming only the host
                raise VoiceError("download", f"voice from {host_of(url)} could not be downloaded")
            return audio
        raise VoiceError("download", "the voice message has no data or URL")

    def _from_base64(self, data: str) -> bytes:
        payload = data.removeprefix("base64://")
        if payload.startswith("data:"):
            payload = payload.partition(",")[2]
        if len(payload) // 4 * 3 > self._fetcher.max_bytes + 3:
            raise VoiceError("download", f"voice data exceeds {self._fetcher.max_bytes} bytes")
        try:
            return base64.b64decode(payload)
        except (binascii.Error, ValueError):
            raise VoiceError("audio", "the voice data is not valid base64") from None

    # --- text to speech -----------------------------------------------------------------------

    async def speak(self, text: str, voice: str, fmt: str) -> Voice:
        """`text` (already capped by the caller) read aloud by `voice` ("" the default), as a QQ silk
        (`fmt` "silk") or MP3 (`fmt` "mp3") voice. Raises VoiceError."""
        speaker = self._speaker
        if speaker is None:
            raise VoiceError("disabled", "[voice] tts_engine is not set")
        if fmt not in ("silk", "mp3"):
            raise VoiceError("bad_request", f"unknown voice format {fmt!r}")
        spoken = speakable(text)
        if not spoken:
            raise VoiceError("empty", "nothing in the answer can be read aloud")
        async with self._call(self._tts_stats, "tts"), self._tts_slots:
            audio = await speaker.synthesize(spoken, voice or self.default_voice)
            encoded, length = await asyncio.to_thread(_encode, audio, fmt)
        return Voice(base64=base64.b64encode(encoded).decode("ascii"), length=length)

    # --- voices -------------------------------------------------------------------------------

    @property
    def default_voice(self) -> str:
        if self._speaker is None:
            return ""
        return self._voice.tts_voice or self._speaker.default_voice

    def offered(self) -> list[str]:
        """The voices users may choose: `tts_voices`, else the engine's built-in list."""
        if self._voice.tts_voices:
            return list(self._voice.tts_voices)
        return self._speaker.builtin_voices() if self._speaker is not None else []

    def resolve(self, name: str) -> str | None:
        """The offered voice a user's `name` (full or alias, any case) means, or None."""
        return voices.resolve(name, self.offered())

    def shown(self, voice: str) -> str:
        """How a voice is named to users (v2's alias)."""
        return voices.alias(voice)

    # --- health -------------------------------------------------------------------------------

    def health(self) -> dict[str, dict[str, Any]]:
        """Counters of both directions for the console's dashboard; no detail that could hold a secret."""
        speaker = self._speaker
        return {
            "stt": _health(self.stt_enabled, self._voice.stt_model, self._stt_stats),
            "tts": _health(speaker is not None, speaker.engine if speaker else "", self._tts_stats),
        }

    def summary(self) -> str:
        """What `.状态` shows, in Chinese: a 语音识别 and a 语音合成 line, each "未启用" when off."""
        speaker = self._speaker
        stt = _summary_line(self.stt_enabled, self._voice.stt_model, self._stt_stats)
        tts = _summary_line(speaker is not None, speaker.engine if speaker else "", self._tts_stats)
        return f"语音识别：{stt}\n语音合成：{tts}"

    @asynccontextmanager
    async def _call(self, stats: CallStats, what: str) -> AsyncIterator[None]:
        """Count a call (`what` is "stt" or "tts"), and turn any surprise inside it into a VoiceError (never deaf)."""
        started = time.monotonic()
        try:
            yield
        except VoiceError as exc:
            self._count(stats, started, exc, what)
            log.warning("{} failed: {} {}", _NAMES[what], exc.kind, exc.detail)
            raise
        except Exception as exc:  # a bug or a library surprise: still the one documented exception
            error = VoiceError("server", f"unexpected {type(exc).__name__}")
            self._count(stats, started, error, what)
            log.opt(exception=exc).error("{} failed unexpectedly", _NAMES[what])
            raise error from None
        self._count(stats, started, None, what)

    def _count(self, stats: CallStats, started: float, error: VoiceError | None, what: str) -> None:
        stats.record(started, error)
        self._metrics.voice_call(what, OK if error is None else error.kind)


_NAMES = {"stt": "transcription", "tts": "speech"}


def _encode(audio: bytes, fmt: str) -> tuple[bytes, int]:
    """A speaker's audio file as silk or MP3, and its length in whole seconds (rounded up)."""
    rate = codec.SILK_RATE if fmt == "silk" else codec.PCM_RATE
    try:
        pcm = codec.to_pcm(audio, rate)
    except codec.AudioError as exc:
        raise VoiceError("audio", f"the engine's audio cannot be decoded: {exc}") from None
    encoded = codec.pcm_to_silk(pcm, rate) if fmt == "silk" else codec.pcm_to_mp3(pcm, rate)
    return encoded, max(1, math.ceil(codec.seconds(pcm, rate)))


def _health(enabled: bool, name: str, stats: CallStats) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "engine": name,
        "ok": stats.ok,
        "failed": stats.failed,
        "last_error": stats.last_error,
        "last_ok_at": stats.last_ok_at,
        "last_failed_at": stats.last_failed_at,
        "last_latency_ms": stats.last_latency_ms,
    }


def _summary_line(enabled: bool, name: str, stats: CallStats) -> str:
    if not enabled:
        return "未启用"
    counts = f"（成功 {stats.ok} 次，失败 {stats.failed} 次）"
    if stats.last_failed:
        return f"{name}，上次失败：{stats.last_error}{counts}"
    return f"{name}，正常{counts}" if stats.ok else f"{name}，尚未使用"
