"""A provider-neutral account pool: round robin, cool-downs, failover, disabling and per-account concurrency."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

from core.backoff import Backoff
from llm.base import AllAccountsFailed, ChatTurn, DeltaSink, FailureKind, LLMReply, ReplyStopped, ToolCall

log = logger.bind(adapter="llm")

RETRY_AFTER_CAP = 20.0  # the longest a request waits in place for a rate-limited account
RATE_LIMIT_COOL_DEFAULT = 20.0  # cool-down after a 429 without Retry-After
RATE_LIMIT_COOL_MAX = 600.0
COOL_MIN = 10.0  # cool-down after an account failed a request, doubling per failure in a row
COOL_MAX = 300.0
THROTTLE_SECONDS = 60.0  # how long a 429 halves an account's concurrency
DEFAULT_MAX_CONCURRENCY = 64
# statuses that say the request itself is wrong: no other account would accept it either
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})
_RETRYABLE: frozenset[FailureKind] = frozenset({"rate_limit", "timeout", "network", "server"})


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
    broken_account: bool = False  # the account's own settings cannot work (a bad proxy or endpoint)

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


class Slots:
    """How many requests an account may have in flight; a 429 halves that for a while.

    Waiters are woken one per released slot, in arrival order; when a halving ends they all look again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.in_flight = 0
        self._reduced = self.limit
        self._reduced_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def effective(self) -> int:
        """The limit right now: halved after a recent 429."""
        return self._reduced if time.monotonic() < self._reduced_until else self.limit

    @property
    def full(self) -> bool:
        return self.in_flight >= self.effective

    def throttle(self, seconds: float | None = None) -> None:
        """Halve the concurrency (not below 1) for `seconds` (THROTTLE_SECONDS); repeated 429s keep halving."""
        self._reduced = max(1, self.effective // 2)
        self._reduced_until = time.monotonic() + (THROTTLE_SECONDS if seconds is None else seconds)

    async def acquire(self) -> None:
        while self.full:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            remaining = self._reduced_until - time.monotonic()
            try:
                # a halved limit recovers by time, not by a release: look again when it ends
                async with asyncio.timeout(remaining if remaining > 0 else None):
                    await waiter
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the slot this waiter was given goes to the next one
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


@dataclass(slots=True, eq=False)
class Account:
    """One configured account as the pool sees it; providers subclass it with their connection details."""

    name: str
    model: str
    models: tuple[str, ...] = ()
    vision: bool = False
    image_model: str = ""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    disabled: FailureKind | None = None  # why it was taken out of service, for the process lifetime
    cooling_until: float = 0.0  # monotonic time before which other accounts are tried first
    strikes: int = 0  # requests failed in a row
    slots: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.slots = Slots(self.max_concurrency)

    def serves(self, model: str) -> bool:
        """The account names `model` as its default or in its `models` list."""
        return model == self.model or model in self.models

    def cool_down(self, seconds: float) -> None:
        self.cooling_until = max(self.cooling_until, time.monotonic() + seconds)


@dataclass(frozen=True, slots=True)
class AccountState:
    """One account as the console shows it."""

    name: str
    model: str
    state: str  # "ready", "cooling" or "disabled"
    reason: str  # why disabled ("auth", "network"...), "" otherwise
    cooling_until: float  # wall-clock time the cool-down ends (0 when not cooling)
    in_flight: int
    limit: int  # concurrency right now (halved for a while after a 429)


@dataclass(slots=True)
class Delivery:
    """Hands streamed text to the caller and remembers that it did (no failover after that)."""

    sink: DeltaSink | None
    delivered: bool = False
    max_reply_tokens: int | None = None  # the caller's completion limit, for the attempt to send
    tools: Sequence[dict[str, Any]] = ()  # the request's OpenAI `tools` entries, for accounts that call functions
    prompt_tokens: int | None = None  # set by an attempt from the server's reported usage
    completion_tokens: int | None = None

    async def emit(self, text: str) -> None:
        if self.sink is not None and text:
            self.delivered = True
            await self.sink(text)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one successful attempt produced: the whole reply text and the tool calls asked for."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()


# One attempt on one account: the Answer, or an exception for the classifier.
Attempt = Callable[[Account, Sequence[ChatTurn], str, Delivery], Awaitable[Answer]]
Classifier = Callable[[BaseException], Failure]
# Provider text for the log with the account's secrets removed.
Scrubber = Callable[[str, Account], str]


class CallObserver(Protocol):
    """Told about every attempt on an account (core.metrics.Metrics is one)."""

    def model_call(
        self,
        account: str,
        seconds: float,
        failure: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None: ...


class AccountPool:
    """Chooses accounts for each request and runs the retry and failover loop around a provider's attempt.

    Each request starts at the next ready account (round robin) and fails over to the others; a
    request with images goes to a ready vision account first. Accounts that just failed cool down.
    Per account: 5xx is retried with capped backoff; a 429 cools the account for its Retry-After,
    halves its concurrency for a minute and moves on (waiting in place only when no other account
    is ready); a timeout or refused connection moves on at once when another account is ready;
    401/403 disables the account until reload; a 400 is the request's fault and fails it at once.
    At most `max_concurrency` attempts per account are in flight; the rest wait for a slot.
    """

    def __init__(
        self,
        *,
        attempt: Attempt,
        classify: Classifier,
        scrub: Scrubber,
        backoff_factory: Callable[[], Backoff] = default_backoff,
        retry_after_cap: float = RETRY_AFTER_CAP,
        observer: CallObserver | None = None,
    ) -> None:
        self.accounts: list[Account] = []
        self._observer = observer
        self._attempt = attempt
        self._classify = classify
        self._scrub = scrub
        self._attempts = 1
        self._backoff_factory = backoff_factory
        self._retry_after_cap = retry_after_cap
        self.cursor = 0

    def configure(self, accounts: Sequence[Account], attempts: int) -> None:
        """Use these accounts from now on, each tried up to `attempts` times per request.

        Requests in flight finish on the accounts they hold; the round robin carries on where it was.
        """
        self.accounts = list(accounts)
        self._attempts = max(1, attempts)

    def states(self) -> list[AccountState]:
        """Every account's readiness, for the console."""
        now, wall = time.monotonic(), time.time()
        found: list[AccountState] = []
        for a in self.accounts:
            cooling = a.cooling_until > now
            state = "disabled" if a.disabled else "cooling" if cooling else "ready"
            until = wall + (a.cooling_until - now) if cooling else 0.0
            found.append(
                AccountState(a.name, a.model, state, a.disabled or "", until, a.slots.in_flight, a.slots.effective)
            )
        return found

    def order(self, preferred: str | None, model: str | None, vision: bool = False) -> list[Account]:
        """The accounts to try: ready vision ones for images, the preferred one, those naming `model`, ready
        before cooling, accounts with a free slot before full ones."""
        usable = [a for a in self.accounts if not a.disabled]
        if not usable:
            return []
        now = time.monotonic()
        ready = [a for a in usable if a.cooling_until <= now]
        cooling = sorted((a for a in usable if a.cooling_until > now), key=lambda a: a.cooling_until)
        first = next((a for a in usable if a.name == preferred), None) if preferred else None
        if ready and first is None:
            # a pinned request does not move the cursor, so unpinned traffic stays evenly spread
            start = self.cursor % len(ready)
            self.cursor = start + 1
            ready = ready[start:] + ready[:start]
        # a full account is still tried, but after one that can start at once (stable sort)
        ready.sort(key=lambda a: a.slots.full)
        order = ready + cooling
        if model:
            order = [a for a in order if a.serves(model)] + [a for a in order if not a.serves(model)]
        if first is not None:
            order = [first, *(a for a in order if a is not first)]
        if vision:
            # a non-vision account would silently drop the image: a ready vision account goes first
            seeing = [a for a in order if a.vision and a.cooling_until <= now]
            order = seeing + [a for a in order if a not in seeing]
        return order

    async def complete(
        self,
        turns: Sequence[ChatTurn],
        *,
        model: str | None = None,
        account: str | None = None,
        on_delta: DeltaSink | None = None,
        max_reply_tokens: int | None = None,
        tools: Sequence[dict[str, Any]] = (),
    ) -> LLMReply:
        """Answer `turns` with the first account that can; raises AllAccountsFailed (see ChatModel)."""
        delivery = Delivery(on_delta, max_reply_tokens=max_reply_tokens, tools=tools)
        last: Failure | None = None
        order = self.order(account, model, vision=any(turn.images for turn in turns))
        for index, candidate in enumerate(order):
            if candidate.disabled:  # another request may have disabled it meanwhile
                continue
            now = time.monotonic()
            others_ready = any(not a.disabled and a.cooling_until <= now for a in order[index + 1 :])
            use_model = model or candidate.model
            outcome = await self._try_account(candidate, turns, use_model, delivery, others_ready)
            if isinstance(outcome, Answer):
                return LLMReply(outcome.text, candidate.name, use_model, delivery.prompt_tokens, outcome.tool_calls)
            last = outcome
            if delivery.delivered:
                raise AllAccountsFailed(outcome.kind, outcome.short, outcome.status, partial=True)
            if outcome.kind == "context_length" or outcome.request_fault:
                raise AllAccountsFailed(outcome.kind, outcome.short, outcome.status)
        if last is None:
            reasons = {a.disabled for a in self.accounts}
            kind: FailureKind = "network" if reasons == {"network"} else "auth"
            raise AllAccountsFailed(kind, "no usable account")
        raise AllAccountsFailed(last.kind, last.short, last.status)

    async def _try_account(
        self, account: Account, turns: Sequence[ChatTurn], model: str, delivery: Delivery, others_ready: bool
    ) -> Answer | Failure:
        """The Answer, or the Failure that ended this account's part in the request."""
        backoff = self._backoff_factory()
        failure = Failure("server")
        for attempt in range(1, self._attempts + 1):
            await account.slots.acquire()
            started = time.monotonic()
            try:
                answer = await self._attempt(account, turns, model, delivery)
                account.strikes, account.cooling_until = 0, 0.0
                self._observe(account, started, None, delivery)
                return answer
            except ReplyStopped:  # the caller ended the answer on purpose: no retry, no failover
                self._observe(account, started, None, delivery)
                raise
            except Exception as exc:  # any provider surprise must end as AllAccountsFailed
                failure = self._classify(exc)
                self._observe(account, started, failure.kind, delivery)
            finally:
                account.slots.release()
            if failure.kind == "auth" or failure.broken_account:
                self.disable(account, failure)
                return failure
            wait: float | None = None
            if delivery.delivered:
                # streamed text was handed to the caller (whether it reached the user is the caller's to log)
                then = "text was already streamed, so no retry"
            elif failure.kind == "context_length" or failure.request_fault:
                then = "the request itself was refused"
            elif failure.kind == "rate_limit":
                account.slots.throttle()
                cool = min(failure.retry_after or RATE_LIMIT_COOL_DEFAULT, RATE_LIMIT_COOL_MAX)
                account.cool_down(cool)
                limit = account.slots.effective
                if others_ready or attempt == self._attempts or cool > self._retry_after_cap:
                    then = f"cooling down for {cool:g} s, concurrency {limit}"
                else:
                    wait = self._delay(failure, backoff)
                    then = f"no other account is ready; retrying in {wait:.2f} s, concurrency {limit}"
            elif not failure.retryable:
                then = "trying the next account"
            elif attempt == self._attempts or (others_ready and failure.kind in ("timeout", "network")):
                # a slow or unreachable account must not hold up an answer another account can give
                self._cool(account)
                then = "trying the next account"
            else:
                wait = self._delay(failure, backoff)
                then = f"retrying in {wait:.2f} s"
            said = f" ({self._scrub(failure.provider_message, account)})" if failure.provider_message else ""
            # f-strings, not loguru arguments: a "{" in an account name must not be formatted
            log.warning(
                f"account {account.name} failed: {failure.kind} {failure.short}{said} "
                f"(attempt {attempt}/{self._attempts}); {then}"
            )
            if wait is None:
                return failure
            await asyncio.sleep(wait)
        return failure

    def _observe(self, account: Account, started: float, failure: str | None, delivery: Delivery) -> None:
        if self._observer is not None:
            seconds = time.monotonic() - started
            tokens = (delivery.prompt_tokens, delivery.completion_tokens) if failure is None else (None, None)
            self._observer.model_call(account.name, seconds, failure, *tokens)

    def _cool(self, account: Account) -> None:
        account.strikes += 1
        account.cool_down(min(COOL_MAX, COOL_MIN * 2 ** min(account.strikes - 1, 16)))

    def _delay(self, failure: Failure, backoff: Backoff) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, self._retry_after_cap)
        return backoff.next_delay()

    def disable(self, account: Account, failure: Failure) -> None:
        """Take `account` out of service: a rejected key until reload, a broken setting until restart."""
        if account.disabled:  # concurrent requests may all see the same 401: log it once
            return
        account.disabled = failure.kind
        if failure.kind == "auth":
            log.error(
                f"account {account.name} rejected its API key ({failure.short}); disabled until the config is reloaded"
            )
        else:
            log.error(f"account {account.name}: {failure.detail}; disabled until restart")
