"""Voice in the conversation: which voice messages are transcribed, and how a session's answers are spoken."""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.config import Settings
from core.event import ChatType, MessageEvent
from core.message import Text, Voice
from storage.base import VOICE_OFF, SessionState

OFF_WORDS = frozenset({"关闭", "关", "none", "off"})  # v2 accepted 关闭 and None
SPOKEN_MARK = "[语音] "  # how a transcript is stored and sent as the user's turn


@dataclass(frozen=True, slots=True)
class Speech:
    """How one answer is spoken: in `voice`, instead of the text (`only`) or after it."""

    voice: str
    only: bool


def speech_for(settings: Settings, state: SessionState, default_voice: str) -> Speech | None:
    """The session's speech: its own voice (切换语音), or the default one when `[response] voice_mode`
    speaks to everyone; None when answers are text only (no engine, turned off, or never chosen)."""
    mode = settings.response.voice_mode
    if not settings.voice.tts_enabled or state.voice == VOICE_OFF:
        return None
    if state.voice:
        return Speech(state.voice, mode == "voice")
    if mode == "off":
        return None
    return Speech(default_voice, mode == "voice")


def spoken(event: MessageEvent) -> Voice | None:
    """The voice of a voice message (QQ sends a voice alone, never with text), else None."""
    voice = next((seg for seg in event.message if isinstance(seg, Voice)), None)
    if voice is None or any(isinstance(seg, Text) and seg.text.strip() for seg in event.message):
        return None
    return voice


def worth_transcribing(settings: Settings, event: MessageEvent) -> bool:
    """Whether the transcript could make the bot answer: a voice cannot carry an @, so in a group it
    is transcribed only when the bot may be addressed without one (or the platform says it was)."""
    if event.chat_type is ChatType.GROUP:
        return event.to_me or settings.trigger.require_mention in ("none", "mention")
    return event.chat_type is ChatType.PRIVATE or settings.system.reply_temp


def as_text(event: MessageEvent, transcript: str) -> MessageEvent:
    """`event` with its voice replaced by what was said."""
    rest = tuple(seg for seg in event.message if not isinstance(seg, Voice))
    return replace(event, message=(*rest, Text(transcript)))
