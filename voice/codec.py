"""Audio in and out: any voice a QQ protocol delivers to 16-bit mono PCM, and PCM to QQ's silk.

silk-python (pysilk) handles Tencent's silk; PyAV (FFmpeg's libraries in its wheel, no system
ffmpeg) handles amr, mp3, wav, ogg/opus and the rest. Everything here is CPU work: callers run it
in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import io
import wave

PCM_RATE = 16_000  # what speech recognisers want, and plenty for speech
SILK_RATE = 24_000  # QQ's own voice messages
SILK_BIT_RATE = 24_000
MAX_SECONDS = 300  # QQ voice messages are at most 60 s; a longer "voice" is refused, not decoded forever


class AudioError(ValueError):
    """Audio that cannot be decoded (unknown format, corrupt, or too long)."""


def sniff(data: bytes) -> str:
    """The container of `data` by its magic bytes: silk, amr, mp3, wav, ogg, or "" when unknown."""
    head = data[:16]
    if head.startswith(b"#!SILK") or head[1:].startswith(b"#!SILK"):  # Tencent's silk has a 0x02 first
        return "silk"
    if head.startswith(b"#!AMR"):
        return "amr"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return ""


def to_pcm(data: bytes, rate: int = PCM_RATE) -> bytes:
    """`data` (any supported voice) as signed 16-bit little-endian mono PCM at `rate`. Raises AudioError,
    also for a voice with no sound in it."""
    pcm = _silk_to_pcm(data, rate) if sniff(data) == "silk" else _av_to_pcm(data, rate)
    if not pcm:
        raise AudioError("the voice holds no sound")
    return pcm


def _silk_to_pcm(data: bytes, rate: int) -> bytes:
    import pysilk  # loaded on first use: a bot that never handles a voice does not pay for it

    output = io.BytesIO()
    try:
        pysilk.decode(io.BytesIO(data), output, rate)
    except Exception as exc:  # pysilk raises its own SilkError and plain errors for bad input
        raise AudioError(f"not a valid silk voice: {exc}") from None
    pcm = output.getvalue()
    if len(pcm) > MAX_SECONDS * rate * 2:
        raise AudioError(f"voice longer than {MAX_SECONDS} s")
    return pcm


def _av_to_pcm(data: bytes, rate: int) -> bytes:
    import av  # loaded on first use: a bot that never handles a voice does not pay for it

    chunks: list[bytes] = []
    size = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for converted in resampler.resample(frame):
                    chunk = bytes(converted.planes[0])[: converted.samples * 2]
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_SECONDS * rate * 2:
                        raise AudioError(f"voice longer than {MAX_SECONDS} s")
            for converted in resampler.resample(None):
                chunks.append(bytes(converted.planes[0])[: converted.samples * 2])
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(f"cannot decode the voice: {exc}") from None
    return b"".join(chunks)


def pcm_to_silk(pcm: bytes, rate: int = PCM_RATE) -> bytes:
    """16-bit mono PCM at `rate` as a QQ voice message (Tencent silk)."""
    import pysilk  # loaded on first use: a bot that never handles a voice does not pay for it

    if rate != SILK_RATE:
        pcm = resample(pcm, rate, SILK_RATE)
    output = io.BytesIO()
    pysilk.encode(io.BytesIO(pcm), output, SILK_RATE, SILK_BIT_RATE, tencent=True)
    return output.getvalue()


def resample(pcm: bytes, rate: int, to: int) -> bytes:
    """16-bit mono PCM from `rate` to `to` samples per second (PyAV's resampler)."""
    import av  # loaded on first use: a bot that never handles a voice does not pay for it

    if rate == to:
        return pcm
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm[: len(pcm) // 2 * 2])
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to)
    out = [bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(frame)]
    out += [bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(None)]
    return b"".join(out)


def pcm_to_wav(pcm: bytes, rate: int = PCM_RATE) -> bytes:
    """A WAV file of 16-bit mono PCM: what transcription endpoints accept everywhere."""
    output = io.BytesIO()
    with wave.open(output, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return output.getvalue()


def seconds(pcm: bytes, rate: int = PCM_RATE) -> float:
    """How long 16-bit mono PCM at `rate` plays."""
    return len(pcm) / 2 / rate


MP3_RATE = 24_000  # speech needs no more; what Edge TTS and OpenAI's tts-1 send too
MP3_BIT_RATE = 48_000


def pcm_to_mp3(pcm: bytes, rate: int = PCM_RATE) -> bytes:
    """16-bit mono PCM at `rate` as an MP3 file (libmp3lame through PyAV): for browsers and the HTTP API."""
    import av  # loaded on first use: a bot that never handles a voice does not pay for it

    pcm = resample(pcm, rate, MP3_RATE)
    output = io.BytesIO()
    with av.open(output, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=MP3_RATE, layout="mono")
        stream.bit_rate = MP3_BIT_RATE
        frame_samples = 1152 * 8  # whole MP3 frames per AudioFrame keep the encoder's buffer small
        step = frame_samples * 2
        for start in range(0, len(pcm) - len(pcm) % 2, step):
            chunk = pcm[start : start + step]
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(chunk) // 2)
            frame.planes[0].update(chunk)
            frame.sample_rate = MP3_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return output.getvalue()
