"""Voice codecs with the real libraries on audio the tests make: silk ⇄ PCM, amr / mp3 / wav / ogg decode."""

from __future__ import annotations

import array
import contextlib
import io
import itertools
import math

import av
import pytest

import voice.codec as codec
from voice.codec import AudioError, pcm_to_silk, pcm_to_wav, resample, seconds, sniff, to_pcm

RATE = 16_000


def tone(duration: float = 1.0, frequency: float = 440.0, rate: int = RATE) -> bytes:
    """A sine tone as 16-bit mono PCM."""
    samples = array.array(
        "h", (int(12000 * math.sin(2 * math.pi * frequency * n / rate)) for n in range(int(duration * rate)))
    )
    return samples.tobytes()


def pitch(pcm: bytes, rate: int = RATE) -> float:
    """The frequency of a tone from its zero crossings (the middle of the signal: codecs fade the edges)."""
    samples = array.array("h", pcm)
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    crossings = sum(1 for a, b in itertools.pairwise(middle) if (a < 0) != (b < 0))
    return crossings / 2 / (len(middle) / rate)


def encoded(pcm: bytes, container: str, codec_name: str, rate: int) -> bytes:
    """`pcm` (16 kHz) encoded by FFmpeg (through PyAV) as a phone or app would send it."""
    pcm = resample(pcm, RATE, rate)
    output = io.BytesIO()
    with av.open(output, mode="w", format=container) as out:
        stream = out.add_stream(codec_name, rate=rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return output.getvalue()


def test_silk_round_trip_keeps_length_and_pitch() -> None:
    silk = pcm_to_silk(tone(), RATE)
    assert silk.startswith(b"\x02#!SILK_V3") and sniff(silk) == "silk"  # Tencent's flavour, as QQ sends it
    pcm = to_pcm(silk)
    assert abs(seconds(pcm) - 1.0) < 0.05
    assert abs(pitch(pcm) - 440) < 20
    again = to_pcm(pcm_to_silk(pcm))  # and once more: silk → PCM → silk
    assert abs(seconds(again) - 1.0) < 0.05 and abs(pitch(again) - 440) < 20


@pytest.mark.parametrize(
    ("container", "codec_name", "rate", "kind"),
    [("amr", "libopencore_amrnb", 8000, "amr"), ("mp3", "libmp3lame", 16000, "mp3"), ("ogg", "libopus", 48000, "ogg")],
)
def test_phone_formats_decode_to_the_same_tone(container: str, codec_name: str, rate: int, kind: str) -> None:
    data = encoded(tone(), container, codec_name, rate)
    assert sniff(data) == kind
    pcm = to_pcm(data)
    assert abs(seconds(pcm) - 1.0) < 0.1
    assert abs(pitch(pcm) - 440) < 20


def test_wav_decodes_exactly() -> None:
    pcm = tone(0.5)
    assert sniff(pcm_to_wav(pcm)) == "wav"
    assert to_pcm(pcm_to_wav(pcm)) == pcm
    assert to_pcm(pcm_to_wav(resample(pcm, RATE, 8000), 8000), RATE) != b""


@pytest.mark.parametrize("data", [b"", b"not audio at all", b"#!AMR\n" + bytes(range(256)), b"RIFF\0\0\0\0WAVEjunk"])
def test_bad_voices_raise_audio_error(data: bytes) -> None:
    with pytest.raises(AudioError):
        to_pcm(data)


def test_garbage_after_a_silk_header_is_noise_or_audio_error_never_a_crash() -> None:
    with contextlib.suppress(AudioError):  # anything else fails the test
        to_pcm(b"\x02#!SILK_V3" + bytes(range(256)) * 8)


def test_a_too_long_voice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_SECONDS", 1)
    with pytest.raises(AudioError, match="longer than"):
        to_pcm(pcm_to_silk(tone(2.0)))
    with pytest.raises(AudioError, match="longer than"):
        to_pcm(encoded(tone(2.0), "mp3", "libmp3lame", RATE))
