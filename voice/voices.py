"""Voice names: the built-in lists, v2's short aliases ("xiaoxiao") and resolving what a user typed."""

from __future__ import annotations

from collections.abc import Sequence

# Edge TTS's Chinese voices (Mandarin, two dialects, Cantonese, Taiwanese Mandarin)
EDGE_VOICES: tuple[str, ...] = (
    "zh-CN-XiaoxiaoNeural",
    "zh-CN-XiaoyiNeural",
    "zh-CN-YunjianNeural",
    "zh-CN-YunxiNeural",
    "zh-CN-YunxiaNeural",
    "zh-CN-YunyangNeural",
    "zh-CN-liaoning-XiaobeiNeural",
    "zh-CN-shaanxi-XiaoniNeural",
    "zh-HK-HiuGaaiNeural",
    "zh-HK-HiuMaanNeural",
    "zh-HK-WanLungNeural",
    "zh-TW-HsiaoChenNeural",
    "zh-TW-HsiaoYuNeural",
    "zh-TW-YunJheNeural",
)
EDGE_DEFAULT = "zh-CN-XiaoxiaoNeural"

# /audio/speech voices of OpenAI's tts-1 and gpt-4o-mini-tts
OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
OPENAI_DEFAULT = "alloy"

# espeak-ng voice names: Mandarin, Cantonese, English
ESPEAK_VOICES: tuple[str, ...] = ("cmn", "yue", "en", "en-us")
ESPEAK_DEFAULT = "cmn"


def alias(full: str) -> str:
    """v2's short name of a voice: the part after the last dash without "Neural", lower-cased
    (zh-CN-XiaoxiaoNeural → "xiaoxiao"); other names (alloy, en-us) are only lower-cased."""
    if not full.endswith("Neural"):
        return full.lower()
    name = full.rsplit("-", 1)[-1][: -len("Neural")]
    return name.lower() if name else full.lower()


def resolve(name: str, offered: Sequence[str]) -> str | None:
    """The offered voice `name` means (a full name or an alias, any case), or None."""
    wanted = name.strip().lower()
    if not wanted:
        return None
    for full in offered:
        if full.lower() == wanted:
            return full
    for full in offered:
        if alias(full) == wanted:
            return full
    return None
