"""OpenAI-compatible chat backend: builds requests, calls the openai SDK, streams, sorts its failures."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
from loguru import logger
from openai._models import FinalRequestOptions
from pydantic import SecretStr

from core.backoff import Backoff
from core.config import DEFAULT_ENDPOINT, OpenAISettings
from core.log import MIN_SECRET_LENGTH, REDACTED, redact
from llm.base import AllAccountsFailed, ChatTurn, DeltaSink, DrawnImage, LLMReply, ToolCall
from llm.http_transport import AiohttpTransport
from llm.pool import (
    REQUEST_FAULT_STATUSES,
    RETRY_AFTER_CAP,
    Account,
    AccountPool,
    AccountState,
    Answer,
    CallObserver,
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
DRAIN_SECONDS = 0.1  # the longest a finished stream is read on after `[DONE]` (as the SDK)
# the SDK refuses an empty key, but local servers (Ollama, vLLM) need none: send a placeholder
_NO_KEY = "no-key"
# --check: a 404 almost always means the base URL lacks its /v1
# the smallest completion limit sent: below it even a short answer would be cut
REPLY_TOKENS_FLOOR = 64
# the completion limit's name on api.openai.com (its o-series models refuse `max_tokens`)
_OPENAI_LIMIT = "max_completion_tokens"
# the most tool calls taken from one reply: more is a misbehaving server, not a plan worth following
MAX_TOOL_CALLS = 32
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


def _delta_texts(delta: dict[str, Any]) -> tuple[str, str]:
    """(`reasoning_content`, `content`) of a stream chunk's `choices[0].delta`; "" for each one absent."""
    reasoning, content = delta.get("reasoning_content"), delta.get("content")
    return (reasoning if isinstance(reasoning, str) else ""), (content if isinstance(content, str) else "")


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (normally nothing) so the HTTP/1.1 connection can be reused.

    Bounded and silent, as in the SDK: the answer is complete, so a server that keeps the stream
    open or drops it now must not turn it into a failure (the connection is then closed instead).
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass


async def _sse_json(response: httpx2.Response) -> AsyncIterator[object]:
    """The JSON of each `data:` event of a chat completion stream, up to `[DONE]`.

    A lean reader in place of the SDK's AsyncStream with the same outcomes: lines end in LF, CRLF or
    CR; an event ends at a blank line (one unfinished at the end of the body is dropped); an event
    holding `{"error": ...}` raises openai.APIError; read errors become APITimeoutError or
    APIConnectionError; after `[DONE]` the rest of the body is read so the connection can be reused.
    Events without data (keep-alives, `event: ping`) are skipped.
    """
    chunks = response.aiter_bytes()
    pending = b""
    data: list[bytes] = []
    try:
        async for block in chunks:
            lines = (pending + block).splitlines(keepends=True) if pending else block.splitlines(keepends=True)
            # an unfinished last line, or one ending in CR whose LF may start the next block, waits for more
            pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
            for line in lines:
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif not line and data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    if payload.startswith(b"[DONE]"):
                        await _drain(chunks)
                        return
                    event = json.loads(payload)
                    error = event.get("error") if isinstance(event, dict) else None
                    if error:
                        message = error.get("message") if isinstance(error, dict) else None
                        raise openai.APIError(
                            message if isinstance(message, str) and message else "An error occurred during streaming",
                            response.request,
                            body=error,
                        )
                    yield event
    except httpx2.TimeoutException as exc:
        raise openai.APITimeoutError(request=response.request) from exc
    except httpx2.TransportError as exc:
        raise openai.APIConnectionError(request=response.request) from exc


def _tool_call_entry(call: ToolCall) -> dict[str, Any]:
    """One entry of an assistant message's `tool_calls`."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _tool_turn_message(turn: ChatTurn, native: bool) -> dict[str, Any] | None:
    """An assistant turn that called tools, or a tool's result, as a message; None: leave it out.

    `native` (an account with `tools = true`): the OpenAI form. Otherwise a form any chat model
    accepts: the assistant's text alone (nothing when it had none) and the result as a system
    message "工具 <name> 的结果：<content>", so the answer can still use what the tools found.
    """
    if turn.role == "tool":
        if native:
            return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.content}
        return {"role": "system", "content": f"工具 {turn.name} 的结果：{turn.content}"}
    if native:
        calls = [_tool_call_entry(call) for call in turn.tool_calls]
        return {"role": "assistant", "content": turn.content or None, "tool_calls": calls}
    return {"role": "assistant", "content": turn.content} if turn.content else None


def _messages(turns: Sequence[ChatTurn], vision: bool, tools: bool = False) -> list[dict[str, Any]]:
    """The request's messages; a turn's images become image parts only for an account with vision;
    tool calls and results keep the OpenAI form only for an account with `tools` (see _tool_turn_message)."""
    out: list[dict[str, Any]] = []
    for turn in turns:
        if turn.tool_calls or turn.role == "tool":
            message = _tool_turn_message(turn, tools)
            if message is not None:
                out.append(message)
            continue
        content: str | list[dict[str, Any]] = turn.content
        if vision and turn.images:
            content = [{"type": "text", "text": turn.content}]
            content += [{"type": "image_url", "image_url": {"url": url}} for url in turn.images]
        out.append({"role": turn.role, "content": content})
    return out


def _arguments_text(value: object) -> str:
    """A fragment of `function.arguments`: a string as sent; an object (Ollama) as its JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return ""


@dataclass(slots=True)
class _CallParts:
    """One tool call being put together from its fragments."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _ToolCallParts:
    """The tool calls of one reply, put together from `tool_calls` entries or stream fragments.

    OpenAI streams a call's id and name in its first fragment and `arguments` in pieces, each
    fragment naming the call by `index`; some servers send a whole call in one fragment; some
    (older vLLM, llama.cpp) send no id (one is made: "call_<random hex>") or no index (the id,
    else a new name, starts a new call). Malformed fragments are skipped, never raised on; calls
    beyond MAX_TOOL_CALLS are dropped.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _CallParts] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add_fragments(self, fragments: object) -> None:
        """The `delta.tool_calls` list of one stream chunk."""
        if not isinstance(fragments, list):
            return
        for fragment in fragments:
            if isinstance(fragment, dict):
                index = fragment.get("index")
                if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    index = self._index_without_index(fragment)
                self.merge(index, fragment)

    def add_message_calls(self, entries: object) -> None:
        """The `message.tool_calls` list of a whole completion."""
        if isinstance(entries, list):
            for position, entry in enumerate(entries):
                if isinstance(entry, dict):
                    self.merge(position, entry)

    def merge(self, index: int, fragment: dict[str, Any]) -> None:
        """Add one fragment to the call at `index`: id and name are kept from the first that has them."""
        call = self._calls.get(index)
        if call is None:
            if len(self._calls) >= MAX_TOOL_CALLS:
                return
            call = self._calls[index] = _CallParts()
        ident = fragment.get("id")
        if isinstance(ident, str) and ident and not call.id:
            call.id = ident
        function = fragment.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
        if piece := _arguments_text(function.get("arguments")):
            call.arguments.append(piece)

    def _index_without_index(self, fragment: dict[str, Any]) -> int:
        """Where a fragment without `index` belongs: the call with its id, a new call for a new id or
        a second name, else the last call."""
        ident = fragment.get("id")
        if isinstance(ident, str) and ident:
            known = next((i for i, call in self._calls.items() if call.id == ident), None)
            if known is not None:
                return known
            return max(self._calls, default=-1) + 1
        last = max(self._calls, default=-1)
        function = fragment.get("function")
        named = isinstance(function, dict) and bool(function.get("name"))
        if last < 0 or (named and self._calls[last].name):
            return last + 1
        return last

    def calls(self) -> tuple[ToolCall, ...]:
        """The finished calls in index order; calls without a name are dropped, missing ids made,
        empty arguments become "{}"."""
        found: list[ToolCall] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                log.warning("the model sent a tool call without a function name; ignored")
                continue
            arguments = "".join(call.arguments)
            ident = call.id or f"call_{secrets.token_hex(12)}"
            found.append(ToolCall(ident, call.name, arguments if arguments.strip() else "{}"))
        return tuple(found)


def _usage(data: object, field: str) -> int | None:
    """`usage.<field>` (prompt_tokens, completion_tokens) of a completion or a stream's last chunk,
    when the server reported it."""
    usage = data.get("usage") if isinstance(data, dict) else None
    value = usage.get(field) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _choice_field(data: object, field: str) -> object:
    """`choices[0][field]`, or None."""
    choices = data.get("choices") if isinstance(data, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    return first.get(field) if isinstance(first, dict) else None


class _LeanClient(openai.AsyncOpenAI):
    """AsyncOpenAI that builds each plain JSON POST from the headers and URL of the first one.

    The SDK merges default, platform, auth and client headers, parses the URL and runs httpx2's
    request merging for every call; for this bot's requests (no retries by the SDK, no per-call
    headers, options or files) the result is the same each time, and rebuilding it cost about a
    tenth of the bot's CPU per message. Anything else goes through the SDK unchanged.
    """

    _plain: dict[str, tuple[httpx2.URL, list[tuple[str, str]], dict[str, Any]]]

    def _build_request(self, options: FinalRequestOptions, *, retries_taken: int = 0) -> httpx2.Request:
        plain = (
            retries_taken == 0
            and options.method == "post"
            and isinstance(options.json_data, dict)
            and options.content is None
            and options.files is None
            and options.extra_json is None
            and not options.headers
            and not options.params
            and isinstance(options.timeout, openai.NotGiven)
            and self.custom_auth is None
        )
        if not plain:
            return super()._build_request(options, retries_taken=retries_taken)
        cache = self.__dict__.setdefault("_plain", {})
        known = cache.get(options.url)
        if known is None:
            request = super()._build_request(options, retries_taken=retries_taken)
            # content-length is the body's own; every other header is the same for the next request
            headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
            cache[options.url] = (request.url, headers, dict(request.extensions))
            return request
        url, headers, extensions = known
        body = json.dumps(options.json_data, ensure_ascii=False, separators=(",", ":")).encode()
        return httpx2.Request("POST", url, headers=headers, content=body, extensions=dict(extensions))


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


def build_client(
    api_key: str,
    endpoint: str,
    proxy: str,
    timeout: float,
    kind: type[openai.AsyncOpenAI] = openai.AsyncOpenAI,
) -> openai.AsyncOpenAI:
    """An SDK client over the bot's aiohttp transport (the proxy, SOCKS included), with no retries of
    its own: retries, backoff and failover are the caller's. Raises ClientSetupError for an unusable
    proxy or endpoint, in words that never repeat them."""
    try:
        transport = AiohttpTransport(proxy)
    except ValueError as exc:
        raise ClientSetupError(f"proxy: {exc}") from None
    try:
        return kind(
            api_key=api_key or _NO_KEY,
            base_url=endpoint,
            max_retries=0,
            timeout=timeout,
            # the SDK's own httpx2 subclass keeps its connection limits and redirect handling
            http_client=openai.DefaultAsyncHttpxClient(transport=transport),
        )
    except Exception:  # e.g. httpx2.InvalidURL for "http://[::1"
        raise ClientSetupError("api_endpoint: not a valid URL") from None


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
    max_reply_tokens: int = 0  # this account's completion cap; 0: gpt_params.max_reply_tokens
    tools: bool = True  # the model can call functions: requests carry `tools`, history keeps the OpenAI form


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
        observer: CallObserver | None = None,
    ) -> None:
        self._pool = AccountPool(
            attempt=self._attempt,
            classify=classify,
            scrub=_scrubbed,
            backoff_factory=backoff_factory,
            retry_after_cap=retry_after_cap,
            observer=observer,
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
                max_reply_tokens=account.max_reply_tokens,
                tools=account.tools,
            )
            for i, account in enumerate(settings.accounts)
        ]
        self._pool.configure(self._accounts, settings.max_retries + 1)

    def states(self) -> list[AccountState]:
        """Every account's readiness, for the console."""
        return self._pool.states()

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
        max_reply_tokens: int | None = None,
        tools: Sequence[dict[str, Any]] = (),
    ) -> LLMReply:
        """Answer the conversation `turns`.

        `model` overrides the account's model (accounts that name it go first); `account` (a name)
        is tried first; `on_delta` receives text while it streams; `max_reply_tokens` is the
        caller's completion limit, lowered to the configured caps and never below REPLY_TOKENS_FLOOR.
        `tools` (OpenAI `tools` entries) go only to accounts with `tools = true`; the reply's
        `tool_calls` are the calls the model asked for (a reply with calls and no text is a reply).
        Raises AllAccountsFailed when every account failed; at once with kind "bad_request" /
        "context_length" when the provider rejects the request itself; with `partial` set when text
        had already gone to `on_delta`.
        """
        return await self._pool.complete(
            turns, model=model, account=account, on_delta=on_delta, max_reply_tokens=max_reply_tokens, tools=tools
        )

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

    async def _attempt(self, account: Account, turns: Sequence[ChatTurn], model: str, delivery: Delivery) -> Answer:
        """One request on `account` (the pool's Attempt); raises for the classifier."""
        assert isinstance(account, _Account)
        caps = [delivery.max_reply_tokens, account.max_reply_tokens or self._params.max_reply_tokens]
        limits = [cap for cap in caps if cap]
        limit = max(REPLY_TOKENS_FLOOR, min(limits)) if limits else None
        messages = _messages(turns, account.vision, account.tools)
        tools = delivery.tools if account.tools else ()
        return await self._request(self._client(account), messages, model, delivery, limit, tools)

    def _client(self, account: _Account) -> openai.AsyncOpenAI:
        """The account's client, built on first use (building one costs about 0.1 s)."""
        if account.client is None:
            key = account.api_key.get_secret_value()
            account.client = build_client(key, account.endpoint, account.proxy, self._params.timeout, _LeanClient)
        return account.client

    async def _request(
        self,
        client: openai.AsyncOpenAI,
        messages: list[dict[str, Any]],
        model: str,
        delivery: Delivery,
        reply_limit: int | None = None,
        tools: Sequence[dict[str, Any]] = (),
    ) -> Answer:
        """One chat completion call; the whole reply text and its tool calls. Raises EmptyReplyError,
        EmptyStreamError (neither when the model asked for tools) or SDK errors.

        `client.post` with a plain dict body, not `chat.completions.create`: create() runs every
        history turn through the SDK's typed-dict transform, which cost ~0.14 ms of CPU per turn
        (75% of the bot's CPU in the benchmark) and buys nothing for already well-formed turns.
        Reasoning (`reasoning_content`) is wrapped in <think>...</think> so the caller strips or
        shows it the same way as R1-style models that put it in their content.
        """
        p = self._params
        # gpt_params.max_tokens is the conversation budget (v2 meaning); the completion limit is
        # `reply_limit`, computed from it. OpenAI itself refuses `max_tokens` for o-series models and
        # takes `max_completion_tokens` for every model; other servers know only `max_tokens`.
        body: dict[str, object] = {
            "model": model,
            "messages": messages,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
            "stream": p.stream,
        }
        if reply_limit is not None:
            body[_OPENAI_LIMIT if client.base_url.host == "api.openai.com" else "max_tokens"] = reply_limit
        if tools:  # no tool key at all otherwise: some servers refuse even an empty list
            body["tools"] = list(tools)
        if p.stream:
            body["stream_options"] = {"include_usage": True}  # the prompt's real size calibrates estimates
        # cast_to=object: the JSON as plain dicts, read tolerantly below; building the SDK's
        # pydantic models for every completion and chunk costs CPU and checks nothing we need.
        parts: list[str] = []
        answered = False
        calls = _ToolCallParts()
        if p.stream:
            stream = await client.post(
                "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
            )
            thinking = False
            chunk: object = None
            async with stream:
                # our own SSE reader on the raw body: the SDK's per-line decoding cost more CPU than the rest of a chunk
                async for chunk in _sse_json(stream.response):
                    delta = _choice_field(chunk, "delta")
                    if not isinstance(delta, dict):
                        continue
                    if fragments := delta.get("tool_calls"):
                        calls.add_fragments(fragments)
                    reasoning, content = _delta_texts(delta)
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
            # read error instead. No text at all is how llama.cpp answers a prompt over its context,
            # unless the model asked for tools.
            delivery.prompt_tokens = _usage(chunk, "prompt_tokens")  # usage comes in the last chunk
            delivery.completion_tokens = _usage(chunk, "completion_tokens")
            if not parts and not calls:
                raise EmptyStreamError
            if thinking:
                parts.append("\n</think>\n\n")
                await delivery.emit(parts[-1])
        else:
            data = await client.post("/chat/completions", body=body, cast_to=object)
            delivery.prompt_tokens = _usage(data, "prompt_tokens")
            delivery.completion_tokens = _usage(data, "completion_tokens")
            reasoning = _choice_content(data, "message", "reasoning_content")
            content = _choice_content(data, "message")
            message = _choice_field(data, "message")
            if isinstance(message, dict) and (entries := message.get("tool_calls")):
                calls.add_message_calls(entries)
            answered = bool(content.strip())
            parts.append((f"<think>\n{reasoning}\n</think>\n\n" if reasoning else "") + content)
            await delivery.emit(parts[0])
        tool_calls = calls.calls() if calls else ()
        if not answered and not tool_calls:
            raise EmptyReplyError
        return Answer("".join(parts), tool_calls)

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
