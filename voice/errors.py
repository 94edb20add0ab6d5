"""The one exception the voice layer raises: a kind to act on and a detail safe for the log."""

from __future__ import annotations

from typing import Literal

VoiceErrorKind = Literal[
    "audio",  # undecodable, too long or silent audio
    "auth",  # the key was refused
    "rate_limit",
    "timeout",
    "network",
    "server",
    "bad_request",  # the provider refused the request itself (or a setting names nothing)
    "empty",  # no text recognised / no audio produced
    "download",  # the voice file could not be fetched
    "unavailable",  # the engine is not installed here
    "disabled",  # the service is switched off in the config
]


class VoiceError(Exception):
    """A failed transcription or synthesis. `detail` never holds a key or a URL's query string."""

    def __init__(self, kind: VoiceErrorKind, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind: VoiceErrorKind = kind
        self.detail = detail
