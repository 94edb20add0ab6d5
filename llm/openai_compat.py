"""OpenAI-compatible chat backend: accounts in turn, retries with backoff, failover, bad keys disabled."""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
from loguru import logger
from pydantic import SecretStr

from core.backoff import Backoff
from core.config import DEFAULT_ENDPOINT, OpenAISettings
from core.log import MIN_SECRET_LENGTH, REDACTED, redact
from llm.base import AllAccountsFailed, ChatTurn, DeltaSink, DrawnImage, FailureKind, LLMReply
from llm.http_transport import AiohttpTransport

log = logger.bind(adapter="llm")

RETRY_AFTER_CAP = 20.0  # the longest a request waits in place for a rate-limited account
RATE_LIMIT_COOL_DEFAULT = 20.0  # cool-down after a 429 without Retry-After
RATE_LIMIT_COOL_MAX = 600.0
COOL_MIN = 10.0  # cool-down after an account failed a request, doubling per failure in a row
COOL_MAX = 300.0
# Providers word "context too long" differently; the status is 400 (or 413) for all of them.
_CONTEXT_ERROR = re.compile(
    r"context.length|context window|maximum context|reduce the length|too many tokens|token limit|"
    r"input is too long|prompt is too long|range of input length|超出.*(长度|上下文)",
    re.IGNORECASE,
)
# statuses that say the request itself is wrong: no other account would accept it either
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})
_RETRYABLE: frozenset[FailureKind] = frozenset({"rate_limit", "timeout", "network", "server"})
# the SDK refuses an empty key, but local servers (Ollama, vLLM) need none: send a placeholder
_NO_KEY = "no-key"


def default_backoff() -> Backoff:
    """The retry schedule for one account within one request."""
    return Backoff(min_delay=0.5, max_delay=8.0)


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong in one attempt, sorted so the retry loop can decide what to do."""

    kind: FailureKind
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""  # short and free of secrets; safe for the log
    provider_message: str = ""  # the provider's error text, for the log only (never for auth errors)

    @property
    def retryable(self) -> bool:
        """Worth another attempt on the same account."""
        return self.kind in _RETRYABLE

    @property
    def request_fault(self) -> bool:
        """The request itself was refused (e.g. context too long): no other account would take it."""
        return self.kind == "bad_request" and self.status in REQUEST_FAULT_STATUSES

    @property
    def short(self) -> str:
        """A few words for logs and for AllAccountsFailed."""
        if self.status is not None:
            return f"HTTP {self.status}"
        return self.detail or self.kind


def _provider_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(message.split())[:200] if isinstance(message, str) else ""


def _scrubbed(text: str, account: _Account) -> str:
    """Provider text for the log: some providers echo the key in any error, not only in a 401."""
    key = account.api_key.get_secret_value()
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


class TruncatedStreamError(Exception):
    """The stream ended without a finish_reason: the answer was cut off."""


class EmptyReplyError(Exception):
    """The provider answered 200 but without any text."""


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
        return Failure("server", detail="empty reply")
    if isinstance(exc, TruncatedStreamError):
        return Failure("network", detail="stream ended early")
    if isinstance(exc, ClientSetupError):
        return Failure("network", detail=str(exc))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            # the provider's text is dropped: OpenAI's 401 message repeats part of the key
            return Failure("auth", status)
        message = _provider_message(exc)
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        if status in REQUEST_FAULT_STATUSES and (code == "context_length_exceeded" or _CONTEXT_ERROR.search(message)):
            return Failure("context_length", status, provider_message=message)
        wait = retry_after_seconds(exc.response.headers)
        if status == 429:
            return Failure("rate_limit", status, retry_after=wait, provider_message=message)
        if status == 408:
            return Failure("timeout", status, provider_message=message)
        if status >= 500:  # a 503 may carry Retry-After too
            return Failure("server", status, retry_after=wait, provider_message=message)
        return Failure("bad_request", status, provider_message=message)
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return Failure("timeout", detail="timed out")
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError | OSError):
        return Failure("network", detail="connection failed")
    # an error event inside a stream, a malformed body, an SDK surprise: the provider's fault
    return Failure("server", detail=type(exc).__name__)


@dataclass(slots=True)
class _Account:
    """One configured account with its lazily built client and whether it is still usable."""

    name: str
    endpoint: str
    model: str
    proxy: str
    api_key: SecretStr
    models: tuple[str, ...] = ()
    vision: bool = False
    image_model: str = ""
    client: openai.AsyncOpenAI | None = None
    disabled: FailureKind | None = None  # why it was taken out of service, for the process lifetime
    cooling_until: float = 0.0  # monotonic time before which other accounts are tried first
    strikes: int = 0  # requests failed in a row

    def serves(self, model: str) -> bool:
        """The account names `model` as its default or in its `models` list."""
        return model == self.model or model in self.models

    def cool_down(self, seconds: float) -> None:
        self.cooling_until = max(self.cooling_until, time.monotonic() + seconds)


@dataclass(slots=True)
class _Delivery:
    """Hands streamed text to the caller and remembers that it did (no failover after that)."""

    sink: DeltaSink | None
    delivered: bool = False

    async def emit(self, text: str) -> None:
        if self.sink is not None and text:
            self.delivered = True
            await self.sink(text)


class OpenAICompatible:
    """A ChatModel over `openai.AsyncOpenAI`, one client per `[[openai.accounts]]` entry.

    Each request starts at the next ready account (round robin) and fails over to the others.
    Accounts that just failed cool down: other accounts are tried first until the cool-down ends.
    Per account: 5xx is retried with capped backoff (`max_retries`); a 429 cools the account for
    its Retry-After and moves on (waiting in place only when no other account is ready); a
    timeout or refused connection moves on at once when another account is ready; 401/403
    disables the account until the settings are reloaded (`reload`) or the bot restarts; a 400 is
    the request's fault and fails it at once.
    """

    def __init__(
        self,
        settings: OpenAISettings,
        *,
        backoff_factory: Callable[[], Backoff] = default_backoff,
        retry_after_cap: float = RETRY_AFTER_CAP,
    ) -> None:
        self._backoff_factory = backoff_factory
        self._retry_after_cap = retry_after_cap
        self._configure(settings)
        self._retired: list[openai.AsyncOpenAI] = []
        self._cursor = 0
        self._draw_cursor = 0

    def _configure(self, settings: OpenAISettings) -> None:
        self._params = settings.gpt_params
        self._attempts = settings.max_retries + 1
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
            )
            for i, account in enumerate(settings.accounts)
        ]

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
        delivery = _Delivery(on_delta)
        last: Failure | None = None
        order = self._order(account, model)
        for index, candidate in enumerate(order):
            if candidate.disabled:  # another request may have disabled it meanwhile
                continue
            now = time.monotonic()
            others_ready = any(not a.disabled and a.cooling_until <= now for a in order[index + 1 :])
            use_model = model or candidate.model
            outcome = await self._try_account(candidate, turns, use_model, delivery, others_ready)
            if isinstance(outcome, str):
                return LLMReply(outcome, candidate.name, use_model)
            last = outcome
            if delivery.delivered:
                raise AllAccountsFailed(outcome.kind, outcome.short, outcome.status, partial=True)
            if outcome.kind == "context_length" or outcome.request_fault:
                raise AllAccountsFailed(outcome.kind, outcome.short, outcome.status)
        if last is None:
            reasons = {a.disabled for a in self._accounts}
            kind: FailureKind = "network" if reasons == {"network"} else "auth"
            raise AllAccountsFailed(kind, "no usable account")
        raise AllAccountsFailed(last.kind, last.short, last.status)

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
            if last.kind == "auth":
                self._disable(account, last)
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

    def _order(self, preferred: str | None, model: str | None) -> list[_Account]:
        """The accounts to try: the preferred one, then those naming `model`, ready before cooling."""
        usable = [a for a in self._accounts if not a.disabled]
        if not usable:
            return []
        now = time.monotonic()
        ready = [a for a in usable if a.cooling_until <= now]
        cooling = sorted((a for a in usable if a.cooling_until > now), key=lambda a: a.cooling_until)
        first = next((a for a in usable if a.name == preferred), None) if preferred else None
        if ready and first is None:
            # a pinned request does not move the cursor, so unpinned traffic stays evenly spread
            start = self._cursor % len(ready)
            self._cursor = start + 1
            ready = ready[start:] + ready[:start]
        order = ready + cooling
        if model:
            order = [a for a in order if a.serves(model)] + [a for a in order if not a.serves(model)]
        if first is not None:
            order = [first, *(a for a in order if a is not first)]
        return order

    async def _try_account(
        self, account: _Account, turns: Sequence[ChatTurn], model: str, delivery: _Delivery, others_ready: bool
    ) -> str | Failure:
        """The reply text, or the Failure that ended this account's part in the request."""
        try:
            client = self._client(account)
        except ClientSetupError as exc:
            failure = classify(exc)
            self._disable(account, failure)
            return failure
        messages = _messages(turns, account.vision)
        backoff = self._backoff_factory()
        failure = Failure("server")
        for attempt in range(1, self._attempts + 1):
            try:
                text = await self._request(client, messages, model, delivery)
                account.strikes, account.cooling_until = 0, 0.0
                return text
            except Exception as exc:  # any provider surprise must end as AllAccountsFailed
                failure = classify(exc)
            if failure.kind == "auth":
                self._disable(account, failure)
                return failure
            wait: float | None = None
            if delivery.delivered:
                then = "part of the answer was already sent"
            elif failure.kind == "context_length" or failure.request_fault:
                then = "the request itself was refused"
            elif failure.kind == "rate_limit":
                cool = min(failure.retry_after or RATE_LIMIT_COOL_DEFAULT, RATE_LIMIT_COOL_MAX)
                account.cool_down(cool)
                if others_ready or attempt == self._attempts or cool > self._retry_after_cap:
                    then = f"cooling down for {cool:g} s"
                else:
                    wait = self._delay(failure, backoff)
                    then = f"no other account is ready; retrying in {wait:.2f} s"
            elif not failure.retryable:
                then = "trying the next account"
            elif attempt == self._attempts or (others_ready and failure.kind in ("timeout", "network")):
                # a slow or unreachable account must not hold up an answer another account can give
                self._cool(account)
                then = "trying the next account"
            else:
                wait = self._delay(failure, backoff)
                then = f"retrying in {wait:.2f} s"
            said = f" ({_scrubbed(failure.provider_message, account)})" if failure.provider_message else ""
            # f-strings, not loguru arguments: a "{" in an account name must not be formatted
            log.warning(
                f"account {account.name} failed: {failure.kind} {failure.short}{said} "
                f"(attempt {attempt}/{self._attempts}); {then}"
            )
            if wait is None:
                return failure
            await asyncio.sleep(wait)
        return failure

    def _cool(self, account: _Account) -> None:
        account.strikes += 1
        account.cool_down(min(COOL_MAX, COOL_MIN * 2 ** min(account.strikes - 1, 16)))

    def _delay(self, failure: Failure, backoff: Backoff) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, self._retry_after_cap)
        return backoff.next_delay()

    def _disable(self, account: _Account, failure: Failure) -> None:
        if account.disabled:  # concurrent requests may all see the same 401: log it once
            return
        account.disabled = failure.kind
        if failure.kind == "auth":
            log.error(
                f"account {account.name} rejected its API key ({failure.short}); disabled until the config is reloaded"
            )
        else:
            log.error(f"account {account.name}: {failure.detail}; disabled until restart")

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
        self, client: openai.AsyncOpenAI, messages: list[dict[str, Any]], model: str, delivery: _Delivery
    ) -> str:
        """One chat completion call; the whole reply text. Raises EmptyReplyError or SDK errors.

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
            thinking = finished = False
            async with stream:
                async for chunk in stream:
                    finished = finished or bool(_choice_field(chunk, "finish_reason"))
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
            if not finished:
                # a dropped connection can end the body cleanly: only finish_reason says the answer is whole
                raise TruncatedStreamError
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
        try:
            client = self._client(account)
            await client.chat.completions.create(
                model=account.model, messages=[{"role": "user", "content": "ping"}], stream=False
            )
        except Exception as exc:  # a check reports every failure, it never raises
            failure = classify(exc)
            return account.name, False, f"{failure.kind}: {failure.short}"
        elapsed_ms = (time.perf_counter() - started) * 1000
        return account.name, True, f"{account.model} answered in {elapsed_ms:.0f} ms"
