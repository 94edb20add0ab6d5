"""OpenAI-compatible chat backend: accounts in turn, retries with backoff, failover, bad keys disabled."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx2
import openai
from loguru import logger
from pydantic import SecretStr

from core.backoff import Backoff
from core.config import DEFAULT_ENDPOINT, OpenAISettings
from llm.base import AllAccountsFailed, ChatTurn, FailureKind, LLMReply
from llm.http_transport import AiohttpTransport

log = logger.bind(adapter="llm")

RETRY_AFTER_CAP = 20.0
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


def _choice_content(data: object, part: str) -> str:
    """`choices[0][part].content` of a completion ("message") or a chunk ("delta"); "" when absent.

    Servers differ: some send `"delta": null` or no choices on the last chunk.
    """
    choices = data.get("choices") if isinstance(data, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    inner = first.get(part) if isinstance(first, dict) else None
    content = inner.get("content") if isinstance(inner, dict) else None
    return content if isinstance(content, str) else ""


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
    if isinstance(exc, ClientSetupError):
        return Failure("network", detail=str(exc))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            # the provider's text is dropped: OpenAI's 401 message repeats part of the key
            return Failure("auth", status)
        message = _provider_message(exc)
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
    client: openai.AsyncOpenAI | None = None
    disabled: FailureKind | None = None  # why it was taken out of service, for the process lifetime


class OpenAICompatible:
    """A ChatModel over `openai.AsyncOpenAI`, one client per `[[openai.accounts]]` entry.

    Each request starts at the next usable account (round robin) and fails over to the others.
    Per account: up to `max_retries + 1` attempts for 429 (Retry-After honoured, capped), 5xx,
    timeouts and connection errors; 401/403 disables the account until restart; a 400 is the
    request's fault and fails the request at once.
    """

    def __init__(
        self,
        settings: OpenAISettings,
        *,
        backoff_factory: Callable[[], Backoff] = default_backoff,
        retry_after_cap: float = RETRY_AFTER_CAP,
    ) -> None:
        self._params = settings.gpt_params
        self._attempts = settings.max_retries + 1
        self._backoff_factory = backoff_factory
        self._retry_after_cap = retry_after_cap
        # the same defaults as core.config.validate fills in, for settings built without it
        self._accounts = [
            _Account(
                name=account.name or f"account{i + 1}",
                endpoint=account.api_endpoint or settings.api_endpoint or DEFAULT_ENDPOINT,
                model=account.model,
                proxy=account.proxy,
                api_key=account.api_key,
            )
            for i, account in enumerate(settings.accounts)
        ]
        self._cursor = 0

    def disabled_accounts(self) -> list[str]:
        """Names of accounts taken out of service (rejected key, unusable proxy or endpoint)."""
        return [account.name for account in self._accounts if account.disabled]

    async def complete(
        self, turns: Sequence[ChatTurn], *, model: str | None = None, account: str | None = None
    ) -> LLMReply:
        """Answer the conversation `turns`.

        `model` overrides the account's model; `account` (a name) is tried first.
        Raises AllAccountsFailed when every account failed, at once with kind "bad_request"
        when the provider rejects the request itself (HTTP 400).
        """
        messages = [{"role": t.role, "content": t.content} for t in turns]
        last: Failure | None = None
        for candidate in self._order(account):
            if candidate.disabled:  # another request may have disabled it meanwhile
                continue
            use_model = model or candidate.model
            outcome = await self._try_account(candidate, messages, use_model)
            if isinstance(outcome, str):
                return LLMReply(outcome, candidate.name, use_model)
            last = outcome
            if outcome.request_fault:
                raise AllAccountsFailed("bad_request", outcome.short, outcome.status)
        if last is None:
            reasons = {a.disabled for a in self._accounts}
            kind: FailureKind = "network" if reasons == {"network"} else "auth"
            raise AllAccountsFailed(kind, "no usable account")
        raise AllAccountsFailed(last.kind, last.short, last.status)

    async def close(self) -> None:
        """Close every client built so far; later requests build new ones."""
        clients = [a.client for a in self._accounts if a.client is not None]
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

    def _order(self, preferred: str | None) -> list[_Account]:
        """The accounts to try for one request: the preferred one first, then round robin."""
        usable = [a for a in self._accounts if not a.disabled]
        if not usable:
            return []
        first = next((a for a in usable if a.name == preferred), None) if preferred else None
        if first is not None:
            # a pinned request does not move the cursor, so unpinned traffic stays evenly spread
            return [first, *(a for a in usable if a is not first)]
        start = self._cursor % len(usable)
        self._cursor = start + 1
        return usable[start:] + usable[:start]

    async def _try_account(self, account: _Account, messages: list[dict[str, str]], model: str) -> str | Failure:
        """The reply text, or the Failure that ended this account's attempts."""
        try:
            client = self._client(account)
        except ClientSetupError as exc:
            failure = classify(exc)
            self._disable(account, failure)
            return failure
        backoff = self._backoff_factory()
        failure = Failure("server")
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._request(client, messages, model)
            except Exception as exc:  # any provider surprise must end as AllAccountsFailed
                failure = classify(exc)
            if failure.kind == "auth":
                self._disable(account, failure)
                return failure
            last_try = attempt == self._attempts or not failure.retryable
            delay = 0.0 if last_try else self._delay(failure, backoff)
            if failure.request_fault:
                then = "the request itself was refused"
            elif last_try:
                then = "giving up on this account"
            else:
                then = f"retrying in {delay:.2f} s"
            said = f" ({failure.provider_message})" if failure.provider_message else ""
            # f-strings, not loguru arguments: a "{" in an account name must not be formatted
            log.warning(
                f"account {account.name} failed: {failure.kind} {failure.short}{said} "
                f"(attempt {attempt}/{self._attempts}); {then}"
            )
            if last_try:
                return failure
            await asyncio.sleep(delay)
        return failure

    def _delay(self, failure: Failure, backoff: Backoff) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, self._retry_after_cap)
        return backoff.next_delay()

    def _disable(self, account: _Account, failure: Failure) -> None:
        if account.disabled:  # concurrent requests may all see the same 401: log it once
            return
        account.disabled = failure.kind
        if failure.kind == "auth":
            log.error(f"account {account.name} rejected its API key ({failure.short}); disabled until restart")
        else:
            log.error(f"account {account.name}: {failure.detail}; disabled until restart")

    def _client(self, account: _Account) -> openai.AsyncOpenAI:
        """The account's client, built on first use (building one costs about 0.1 s)."""
        if account.client is None:
            try:
                transport = AiohttpTransport(account.proxy)
            except ValueError:
                raise ClientSetupError("proxy: only http:// and https:// proxies are supported") from None
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

    async def _request(self, client: openai.AsyncOpenAI, messages: list[dict[str, str]], model: str) -> str:
        """One chat completion call; the whole reply text. Raises EmptyReplyError or SDK errors.

        `client.post` with a plain dict body, not `chat.completions.create`: create() runs every
        history turn through the SDK's typed-dict transform, which cost ~0.14 ms of CPU per turn
        (75% of the bot's CPU in the benchmark) and buys nothing for already well-formed turns.
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
        if p.stream:
            stream = await client.post(
                "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
            )
            parts: list[str] = []
            async with stream:
                async for chunk in stream:
                    parts.append(_choice_content(chunk, "delta"))
            text = "".join(parts)
        else:
            text = _choice_content(await client.post("/chat/completions", body=body, cast_to=object), "message")
        if not text.strip():
            raise EmptyReplyError
        return text

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
