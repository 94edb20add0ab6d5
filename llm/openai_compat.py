"""OpenAI-compatible chat backend: builds requests, calls the openai SDK, streams, sorts its failures."""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
from loguru import logger
from pydantic import SecretStr

from core.backoff import Backoff
from core.config import DEFAULT_ENDPOINT, OpenAISettings
from core.log import MIN_SECRET_LENGTH, REDACTED, redact
from llm.base import AllAccountsFailed, ChatTurn, DeltaSink, DrawnImage, LLMReply
from llm.http_transport import AiohttpTransport
from llm.pool import (
    REQUEST_FAULT_STATUSES,
    RETRY_AFTER_CAP,
    Account,
    AccountPool,
    Delivery,
    Failure,
    default_backoff,
)

log = logger.bind(adapter="llm")

# Providers word "context too long" differently: OpenAI, DeepSeek and vLLM ("maximum context length"),
# llama.cpp ("exceeds the available context size"), Ollama ("exceeds ... context length"), DashScope
# ("Range of input length should be"), others ("reduce the length", "too many tokens").
_CONTEXT_ERROR = re.compile(
    r"context.length|context window|maximum context|context size|exceeds? (the )?(max\w* )?context|"
    r"reduce the length|too many tokens|token limit|input is too long|prompt is too long|"
    r"range of input length|超出.*(长度|上下文)",
    re.IGNORECASE,
)
# statuses a context overflow arrives with: 400/413/422 mostly, 500 from older llama.cpp servers
_CONTEXT_STATUSES = REQUEST_FAULT_STATUSES | {500}
# the SDK refuses an empty key, but local servers (Ollama, vLLM) need none: send a placeholder
_NO_KEY = "no-key"
# --check: a 404 almost always means the base URL lacks its /v1
_CHECK_404 = "接口地址通常应以 /v1 结尾 (endpoint should usually end in /v1)"


def _provider_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(message.split())[:200] if isinstance(message, str) else ""


def _scrubbed(text: str, account: Account) -> str:
    """Provider text for the log: some providers echo the key in any error, not only in a 401."""
    key = account.api_key.get_secret_value() if isinstance(account, _Account) else ""
    if len(key) >= MIN_SECRET_LENGTH:
        text = text.replace(key, REDACTED)
    return redact(text)


def _choice_content(data: object, part: str, field: str = "content") -> str:
    """`choices[0][part][field]` of a completion ("message") or a chunk ("delta"); "" when absent.

    Servers differ: some send `"delta": null` or no choices on the last chunk.
    """
    inner = _choice_field(data, part)
    value = inner.get(field) if isinstance(inner, dict) else None
    return value if isinstance(value, str) else ""


def _messages(turns: Sequence[ChatTurn], vision: bool) -> list[dict[str, Any]]:
    """The request's messages; a turn's images become image parts only for an account with vision."""
    out: list[dict[str, Any]] = []
    for turn in turns:
        content: str | list[dict[str, Any]] = turn.content
        if vision and turn.images:
            content = [{"type": "text", "text": turn.content}]
            content += [{"type": "image_url", "image_url": {"url": url}} for url in turn.images]
        out.append({"role": turn.role, "content": content})
    return out


def _choice_field(data: object, field: str) -> object:
    """`choices[0][field]`, or None."""
    choices = data.get("choices") if isinstance(data, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return first.get(field) if isinstance(first, dict) else None


class EmptyStreamError(Exception):
    """The provider answered 200 with a stream holding no text at all: how llama.cpp and some proxies
    report a prompt over the context window."""


class EmptyReplyError(Exception):
    """The provider answered 200 but without any answer text."""


class ClientSetupError(Exception):
    """The client for an account could not be built (a bad proxy or endpoint setting)."""


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds asked for by `retry-after-ms` / `Retry-After` (seconds or an HTTP date), or None."""
    try:
        if millis := headers.get("retry-after-ms"):
            value = float(millis) / 1000
        elif raw := headers.get("retry-after"):
            try:
                value = float(raw)
            except ValueError:
                when = email.utils.parsedate_to_datetime(raw)
                value = (when - (now or datetime.now(UTC))).total_seconds()
        else:
            return None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, value) if math.isfinite(value) else None


def classify(exc: BaseException) -> Failure:
    """Sort an exception from one attempt into a Failure (a pure function: no I/O, no state)."""
    if isinstance(exc, EmptyReplyError):
        return Failure("empty", detail="empty reply")
    if isinstance(exc, EmptyStreamError):
        return Failure("context_length", detail="empty stream")
    if isinstance(exc, ClientSetupError):
        return Failure("network", detail=str(exc), broken_account=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            # the provider's text is dropped: OpenAI's 401 message repeats part of the key
            return Failure("auth", status)
        message = _provider_message(exc)
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        if status in _CONTEXT_STATUSES and (code == "context_length_exceeded" or _CONTEXT_ERROR.search(message)):
            return Failure("context_length", status, provider_message=message)
        wait = retry_after_seconds(exc.response.headers)
        if status == 429:
            return Failure("rate_limit", status, retry_after=wait, provider_message=message)
        if status == 408:
            return Failure("timeout", status, provider_message=message)
        if status >= 500:  # a 503 may carry Retry-After too
            return Failure("server", status, retry_after=wait, provider_message=message)
        return Failure("bad_request", status, provider_message=message)
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
        # an error event inside a 200 stream (llama.cpp reports the context overflow this way)
        message = " ".join(str(exc.message).split())[:200]
        if _CONTEXT_ERROR.search(message):
            return Failure("context_length", detail="error in stream", provider_message=message)
        return Failure("server", detail="error in stream", provider_message=message)
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return Failure("timeout", detail="timed out")
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError | OSError):
        return Failure("network", detail="connection failed")
    # an error event inside a stream, a malformed body, an SDK surprise: the provider's fault
    return Failure("server", detail=type(exc).__name__)


@dataclass(slots=True, eq=False)
class _Account(Account):
    """An account with its OpenAI-compatible connection settings and its lazily built client."""

    endpoint: str = DEFAULT_ENDPOINT
    proxy: str = ""
    api_key: SecretStr = field(default_factory=lambda: SecretStr(""))
    client: openai.AsyncOpenAI | None = None


class OpenAICompatible:
    """A ChatModel over `openai.AsyncOpenAI`, one client per `[[openai.accounts]]` entry.

    Choosing accounts, retries, failover, cool-downs and concurrency are the AccountPool's
    (llm/pool.py); this class builds the requests, calls the SDK and sorts its exceptions.
    """

    def __init__(
        self,
        settings: OpenAISettings,
        *,
        backoff_factory: Callable[[], Backoff] = default_backoff,
        retry_after_cap: float = RETRY_AFTER_CAP,
    ) -> None:
        self._pool = AccountPool(
            attempt=self._attempt,
            classify=classify,
            scrub=_scrubbed,
            backoff_factory=backoff_factory,
            retry_after_cap=retry_after_cap,
        )
        self._configure(settings)
        self._retired: list[openai.AsyncOpenAI] = []
        self._draw_cursor = 0

    def _configure(self, settings: OpenAISettings) -> None:
        self._params = settings.gpt_params
        self._image_size = settings.image_size
        # the same defaults as core.config.validate fills in, for settings built without it
        self._accounts = [
            _Account(
                name=account.name or f"account{i + 1}",
                endpoint=account.api_endpoint or settings.api_endpoint or DEFAULT_ENDPOINT,
                model=account.model,
                proxy=account.proxy,
                api_key=account.api_key,
                models=tuple(account.models),
                vision=account.vision,
                image_model=account.image_model,
                max_concurrency=account.max_concurrency,
            )
            for i, account in enumerate(settings.accounts)
        ]
        self._pool.configure(self._accounts, settings.max_retries + 1)

    def reload(self, settings: OpenAISettings) -> None:
        """Use new account settings: disabled keys get another chance, cool-downs start over."""
        # Requests in flight keep using the old clients; they are closed with the backend.
        self._retired += [a.client for a in self._accounts if a.client is not None]
        self._configure(settings)

    def disabled_accounts(self) -> list[str]:
        """Names of accounts taken out of service (rejected key, unusable proxy or endpoint)."""
        return [account.name for account in self._accounts if account.disabled]

    def accounts(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(name, default model, other models) of every usable account, in config order."""
        return [(a.name, a.model, a.models) for a in self._accounts if not a.disabled]

    def default_model(self, account: str | None) -> str:
        """The model `account` uses by default ("" for an unknown name)."""
        return next((a.model for a in self._accounts if a.name == account), "")

    def account_for_model(self, model: str) -> str:
        """The first usable account that names `model`, or ""."""
        return next((a.name for a in self._accounts if not a.disabled and a.serves(model)), "")

    @property
    def vision_available(self) -> bool:
        """Some usable account accepts images."""
        return any(a.vision and not a.disabled for a in self._accounts)

    async def complete(
        self,
        turns: Sequence[ChatTurn],
        *,
        model: str | None = None,
        account: str | None = None,
        on_delta: DeltaSink | None = None,
    ) -> LLMReply:
        """Answer the conversation `turns`.

        `model` overrides the account's model (accounts that name it go first); `account` (a name)
        is tried first; `on_delta` receives text while it streams. Raises AllAccountsFailed when
        every account failed; at once with kind "bad_request" / "context_length" when the provider
        rejects the request itself; with `partial` set when text had already gone to `on_delta`.
        """
        return await self._pool.complete(turns, model=model, account=account, on_delta=on_delta)

    async def draw(self, prompt: str) -> DrawnImage:
        """One picture from the images API of an account with `image_model`, failing over between them."""
        drawers = [a for a in self._accounts if a.image_model and not a.disabled]
        if not drawers:
            raise AllAccountsFailed("unsupported", "no account has image_model")
        start = self._draw_cursor % len(drawers)
        self._draw_cursor = start + 1
        last = Failure("server")
        for account in drawers[start:] + drawers[:start]:
            body = {"model": account.image_model, "prompt": prompt, "n": 1, "size": self._image_size}
            try:
                data = await self._client(account).post("/images/generations", body=body, cast_to=object)
                items = data.get("data") if isinstance(data, dict) else None
                item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
                url, b64 = item.get("url"), item.get("b64_json")
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    return DrawnImage(url=url, account=account.name)
                if isinstance(b64, str) and b64:
                    return DrawnImage(base64=b64, account=account.name)
                raise EmptyReplyError
            except Exception as exc:  # every failure is sorted, logged and ends in failover
                last = classify(exc)
            if last.kind == "auth" or last.broken_account:
                self._pool.disable(account, last)
            else:
                log.warning(f"account {account.name} could not draw: {last.kind} {last.short}")
            if last.request_fault:  # e.g. a prompt refused by the safety system: another account would refuse it too
                break
        raise AllAccountsFailed(last.kind, last.short, last.status)

    async def close(self) -> None:
        """Close every client built so far; later requests build new ones."""
        clients = [a.client for a in self._accounts if a.client is not None] + self._retired
        self._retired = []
        for account in self._accounts:
            account.client = None
        for client in clients:
            try:
                await client.close()
            except Exception as exc:  # one failing close must not keep the others open
                log.debug(f"closing an LLM client failed: {type(exc).__name__}")

    async def check(self) -> list[tuple[str, bool, str]]:
        """Try each account once with a tiny request: (account name, ok, short detail)."""
        return list(await asyncio.gather(*(self._check_one(a) for a in self._accounts)))

    # --- internals -----------------------------------------------------------------------------

    async def _attempt(self, account: Account, turns: Sequence[ChatTurn], model: str, delivery: Delivery) -> str:
        """One request on `account` (the pool's Attempt); raises for the classifier."""
        assert isinstance(account, _Account)
        return await self._request(self._client(account), _messages(turns, account.vision), model, delivery)

    def _client(self, account: _Account) -> openai.AsyncOpenAI:
        """The account's client, built on first use (building one costs about 0.1 s)."""
        if account.client is None:
            try:
                transport = AiohttpTransport(account.proxy)
            except ValueError as exc:
                raise ClientSetupError(f"proxy: {exc}") from None
            # the SDK's own httpx2 subclass keeps its connection limits and redirect handling
            http_client = openai.DefaultAsyncHttpxClient(transport=transport)
            try:
                account.client = openai.AsyncOpenAI(
                    api_key=account.api_key.get_secret_value() or _NO_KEY,
                    base_url=account.endpoint,
                    max_retries=0,  # retries, backoff and failover are ours
                    timeout=self._params.timeout,
                    http_client=http_client,
                )
            except Exception:  # e.g. httpx2.InvalidURL for "http://[::1"
                raise ClientSetupError("api_endpoint: not a valid URL") from None
        return account.client

    async def _request(
        self, client: openai.AsyncOpenAI, messages: list[dict[str, Any]], model: str, delivery: Delivery
    ) -> str:
        """One chat completion call; the whole reply text. Raises EmptyReplyError, EmptyStreamError or SDK errors.

        `client.post` with a plain dict body, not `chat.completions.create`: create() runs every
        history turn through the SDK's typed-dict transform, which cost ~0.14 ms of CPU per turn
        (75% of the bot's CPU in the benchmark) and buys nothing for already well-formed turns.
        Reasoning (`reasoning_content`) is wrapped in <think>...</think> so the caller strips or
        shows it the same way as R1-style models that put it in their content.
        """
        p = self._params
        # max_tokens is deliberately not sent: in this config it is the conversation budget (v2 meaning)
        body: dict[str, object] = {
            "model": model,
            "messages": messages,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
            "stream": p.stream,
        }
        # cast_to=object: the JSON as plain dicts, read tolerantly below; building the SDK's
        # pydantic models for every completion and chunk costs CPU and checks nothing we need.
        parts: list[str] = []
        answered = False
        if p.stream:
            stream = await client.post(
                "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
            )
            thinking = False
            async with stream:
                async for chunk in stream:
                    reasoning = _choice_content(chunk, "delta", "reasoning_content")
                    content = _choice_content(chunk, "delta")
                    piece = ""
                    if reasoning:
                        piece = reasoning if thinking else "<think>\n" + reasoning
                        thinking = True
                    if content:
                        piece += ("\n</think>\n\n" if thinking else "") + content
                        thinking, answered = False, answered or bool(content.strip())
                    if piece:
                        parts.append(piece)
                        await delivery.emit(piece)
            # A stream that ends cleanly ([DONE] or a complete body) after text is a whole answer even
            # without finish_reason (llama.cpp and some proxies omit it); a dropped connection ends in a
            # read error instead. No text at all is how llama.cpp answers a prompt over its context.
            if not parts:
                raise EmptyStreamError
            if thinking:
                parts.append("\n</think>\n\n")
                await delivery.emit(parts[-1])
        else:
            data = await client.post("/chat/completions", body=body, cast_to=object)
            reasoning = _choice_content(data, "message", "reasoning_content")
            content = _choice_content(data, "message")
            answered = bool(content.strip())
            parts.append((f"<think>\n{reasoning}\n</think>\n\n" if reasoning else "") + content)
            await delivery.emit(parts[0])
        if not answered:
            raise EmptyReplyError
        return "".join(parts)

    async def _check_one(self, account: _Account) -> tuple[str, bool, str]:
        started = time.perf_counter()
        # one token is enough to prove the key, the endpoint and the model work, and costs nothing
        body = {"model": account.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        try:
            client = self._client(account)
            await client.post("/chat/completions", body=body, cast_to=object)
        except Exception as exc:  # a check reports every failure, it never raises
            failure = classify(exc)
            if failure.status == 404:
                return account.name, False, f"{failure.kind}: {failure.short}: {_CHECK_404}"
            return account.name, False, f"{failure.kind}: {failure.short}"
        elapsed_ms = (time.perf_counter() - started) * 1000
        return account.name, True, f"{account.model} answered in {elapsed_ms:.0f} ms"
