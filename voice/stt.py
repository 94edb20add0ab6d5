"""Speech to text: a voice message to its words through an OpenAI-compatible /audio/transcriptions endpoint."""

from __future__ import annotations

import array
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from openai import AsyncOpenAI, omit
from pydantic import SecretStr

from core.config import DEFAULT_ENDPOINT, OpenAISettings, VoiceSettings
from llm.openai_compat import ClientSetupError, classify
from llm.openai_compat import build_client as openai_client
from voice import codec
from voice.errors import VoiceError, VoiceErrorKind

log = logger.bind(adapter="voice")

MIN_SECONDS = 0.1  # shorter is a slip of the thumb (or a corrupt file decoded to a click), not speech
SILENCE_PEAK = 64  # of 32767: below it nothing was said, and recognisers invent text for silence

# Failure kinds of llm.openai_compat.classify that have no voice meaning of their own
_KIND_OF_FAILURE: dict[str, VoiceErrorKind] = {
    "auth": "auth",
    "rate_limit": "rate_limit",
    "timeout": "timeout",
    "network": "network",
    "server": "server",
    "bad_request": "bad_request",
    "context_length": "bad_request",
    "empty": "empty",
}


@dataclass(frozen=True, slots=True)
class Connection:
    """Where an audio request goes: key, base URL and proxy, resolved like the chat client's."""

    api_key: SecretStr
    endpoint: str
    proxy: str = ""


def resolve_connection(own_key: SecretStr, own_endpoint: str, account_name: str, openai: OpenAISettings) -> Connection:
    """`own_key` / `own_endpoint` when set, else those of the account named `account_name` ("" the first),
    else the `[openai]` defaults. The proxy is the account's, unless an own endpoint is set and no
    account is named (a separate service, reached directly). Raises VoiceError("bad_request") for
    an account name that is not configured."""
    accounts = openai.accounts
    if account_name:
        account = next((a for a in accounts if a.name == account_name), None)
        if account is None:
            raise VoiceError("bad_request", f"no [[openai.accounts]] entry is named {account_name!r}")
    else:
        account = accounts[0] if accounts else None
    key = own_key if own_key.get_secret_value() else (account.api_key if account else SecretStr(""))
    endpoint = own_endpoint or (account.api_endpoint if account else "") or openai.api_endpoint or DEFAULT_ENDPOINT
    uses_account = account is not None and (bool(account_name) or not own_endpoint)
    return Connection(api_key=key, endpoint=endpoint, proxy=account.proxy if account and uses_account else "")


class AudioClient:
    """The SDK client of one voice endpoint (`[voice] stt_*` or `tts_*`), built on first use with the chat
    client's recipe (llm.openai_compat.build_client), one try only: a voice answer that waits for
    retries is worse than a text one."""

    def __init__(self, connection: Callable[[], Connection], timeout: float, what: str) -> None:
        self._connection = connection
        self._timeout = timeout
        self._what = what
        self._client: AsyncOpenAI | None = None

    def get(self) -> AsyncOpenAI:
        """The client; raises VoiceError("bad_request") for an unusable account, proxy or endpoint setting."""
        if self._client is None:
            connection = self._connection()
            key = connection.api_key.get_secret_value()
            try:
                self._client = openai_client(key, connection.endpoint, connection.proxy, self._timeout)
            except ClientSetupError as exc:
                raise VoiceError("bad_request", str(exc)) from None
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # closing must not fail a reload or shutdown
                log.debug("closing the {} client failed: {}", self._what, type(exc).__name__)


def error_of(exc: BaseException) -> VoiceError:
    """An SDK or transport exception as a VoiceError, sorted by the chat client's classifier."""
    if isinstance(exc, VoiceError):
        return exc
    failure = classify(exc)
    detail = f"HTTP {failure.status}" if failure.status else failure.short
    return VoiceError(_KIND_OF_FAILURE.get(failure.kind, "server"), detail)


class Transcriber:
    """Turns voice messages into text with `[voice] stt_*`; one SDK client, built on first use."""

    def __init__(self, voice: VoiceSettings, openai: OpenAISettings) -> None:
        self._voice = voice
        self._client = AudioClient(
            lambda: resolve_connection(voice.stt_api_key, voice.stt_api_endpoint, voice.stt_account, openai),
            voice.stt_timeout,
            "transcription",
        )

    @property
    def model(self) -> str:
        return self._voice.stt_model

    async def transcribe(self, audio: bytes) -> str:
        """The words spoken in `audio` (any format voice.codec decodes), stripped. Raises VoiceError."""
        try:
            async with asyncio.timeout(self._voice.stt_timeout):
                wav = await asyncio.to_thread(_as_wav, audio)
                text = await self._request(wav)
        except TimeoutError:
            raise VoiceError("timeout", f"no transcript within {self._voice.stt_timeout:g}s") from None
        except VoiceError:
            raise
        except Exception as exc:  # every SDK or transport failure becomes one VoiceError
            raise error_of(exc) from None
        if not text:
            raise VoiceError("empty", "the transcript is empty")
        return text

    async def _request(self, wav: bytes) -> str:
        language = self._voice.stt_language
        result = await self._client.get().audio.transcriptions.create(
            model=self._voice.stt_model,
            file=("voice.wav", wav, "audio/wav"),
            response_format="json",
            language=language or omit,
        )
        text = getattr(result, "text", result)
        return text.strip() if isinstance(text, str) else ""

    async def close(self) -> None:
        await self._client.close()


def _as_wav(audio: bytes) -> bytes:
    """`audio` as a 16 kHz mono WAV; VoiceError("audio") when it cannot be decoded or holds no sound."""
    try:
        pcm = codec.to_pcm(audio)
    except codec.AudioError as exc:
        raise VoiceError("audio", str(exc)) from None
    except Exception as exc:  # a decoder surprise on hostile input is still bad audio, never a crash
        raise VoiceError("audio", f"cannot decode the voice: {type(exc).__name__}") from None
    if codec.seconds(pcm) < MIN_SECONDS:
        raise VoiceError("audio", f"the voice is shorter than {MIN_SECONDS:g}s")
    if _peak(pcm) < SILENCE_PEAK:
        raise VoiceError("audio", "the voice is silent")
    return codec.pcm_to_wav(pcm)


def _peak(pcm: bytes) -> int:
    """The largest absolute sample of 16-bit PCM."""
    samples = array.array("h", pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return max(max(samples, default=0), -min(samples, default=0))
