"""A scriptable fake OpenAI-compatible server (chat, images, audio) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import array
import asyncio
import base64
import io
import json
import math
import time
import wave
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
from aiohttp import web

from tests.fakes.image_server import tiny_png


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One function call the fake model asks for."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)  # a dict is sent as its JSON text
    id: str | None = ""  # "": the fake makes one ("call_fake<n>"); None: sent without an id (older vLLM, llama.cpp)

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class FakeToolCalls:
    """A reply asking for tools (what `reply_fn` returns instead of text), in both stream and JSON modes.

    `text` comes first, as content. Streamed like OpenAI: per call one fragment with index, id,
    type and name, then `arguments` in pieces of `arguments_chunk` characters; `whole` sends each
    call in a single fragment instead; `indexed=False` leaves out `index` (some servers do).
    """

    calls: Sequence[FakeCall]
    text: str = ""
    whole: bool = False
    arguments_chunk: int = 3
    indexed: bool = True


Reply = str | FakeToolCalls
ReplyFn = Callable[[dict[str, Any]], Reply]

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


@dataclass(slots=True)
class _Plan:
    """One scripted answer: an HTTP error status, or `status == 0` for a hang."""

    status: int
    retry_after: float | None = None
    message: str = ""  # the error's message; a generic one when empty


def _text_of(content: Any) -> str:
    """Message content is a string or a list of parts (the multimodal form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def echo_last_user(body: dict[str, Any]) -> str:
    """The default reply: "echo: " + the last user message, so tests can see what reached the model."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            return "echo: " + _text_of(message.get("content"))
    return "echo: "


def replies_in_order(*replies: Reply) -> ReplyFn:
    """A reply_fn answering each request with the next of `replies` (text or FakeToolCalls), then echoing."""
    queue = deque(replies)

    def reply(body: dict[str, Any]) -> Reply:
        return queue.popleft() if queue else echo_last_user(body)

    return reply


def last_tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `tool` messages at the end of a request's messages (the results sent back for the last calls)."""
    found: list[dict[str, Any]] = []
    for message in reversed(body.get("messages") or ()):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        found.append(message)
    return found[::-1]


class FakeOpenAI:
    """`POST /v1/chat/completions`, JSON and SSE, with planned failures, hangs and latency; also
    `/v1/images/generations`, `/v1/audio/transcriptions` (answers `transcript`) and `/v1/audio/speech`
    (a tone of `speech_seconds(input)`), which honour `fail_key`, `fail_next` and `hang_next` too.

    Scripting: `fail_next(status, times, retry_after)` and `hang_next(times)` queue behaviours used
    by the next requests in order; `fail_key(api_key, status)` makes one key always fail (checked
    first, like a real server checks auth first); `latency` delays every answer; `reply_fn(body)`
    computes the reply text, or returns FakeToolCalls to ask for tool calls (`replies_in_order` scripts
    a sequence; `last_tool_results(body)` reads the results a request sent back). Every request is
    appended to `requests` unless `record` is false.
    Streams: `finish_reason=False` leaves out the finishing chunk (llama.cpp, some proxies),
    `send_done=False` ends the body cleanly without `[DONE]`, `stream_error` sends an error event
    instead of an answer (how llama.cpp reports a prompt over its context). `in_flight` and
    `peak_in_flight` count requests being answered at once.
    Like a real server it honours `max_tokens` / `max_completion_tokens` (the reply is cut there,
    finish_reason "length") and reports usage, counting `tokens_per_char` tokens per character of
    the messages' text; `loop_forever` streams filler until the client hangs up or the limit is
    reached (a looping model); `overflow_empty` answers a prompt over `context_limit` with an empty
    200 stream (llama.cpp) instead of a 400.
    """

    def __init__(self, *, latency: float = 0.0, reply_fn: ReplyFn = echo_last_user, chunk_chars: int = 8) -> None:
        self.latency = latency
        self.reply_fn = reply_fn
        self.chunk_chars = chunk_chars  # stream pieces of this many characters
        self.chunk_delay = 0.0  # seconds between stream chunks; 0 sends them in one write
        self.context_limit: int | None = None  # characters of all messages; above it: 400 context_length_exceeded
        self.reasoning = ""  # sent as `reasoning_content` before the answer (DeepSeek-R1 style)
        self.break_stream_after: int | None = None  # stream this many content chunks, then drop the connection
        self.model_latency: dict[str, float] = {}  # extra latency per requested model (a slow account)
        self.finish_reason = True  # send the finishing chunk with finish_reason "stop"
        self.send_done = True  # end a stream with `data: [DONE]`
        self.stream_error = ""  # when set: a 200 stream holding only this error event
        self.tokens_per_char = 0.25  # how usage counts text: about four characters a token
        self.loop_forever = False  # stream `filler` without end (up to max_tokens, when sent)
        self.filler = "；；；＃＋"
        self.overflow_empty = False  # over context_limit: an empty 200 stream rather than a 400
        self.loop_chunks_sent = 0  # filler chunks written by the last looping answer
        self.loops_active = 0  # looping answers still being generated
        self.in_flight = 0
        self.peak_in_flight = 0
        self.image_requests: list[dict[str, Any]] = []
        self.image_format = "b64_json"  # or "url": how /images/generations answers
        self.transcript = "你好"  # what /audio/transcriptions hears in any upload
        self.transcription_requests: list[dict[str, Any]] = []  # model, language, file (bytes), authorization
        self.speech_requests: list[dict[str, Any]] = []  # the JSON body and the authorization
        self.record = True  # benchmarks turn this off so memory stays flat
        self.requests: list[dict[str, Any]] = []
        self.key_failures: dict[str, int] = {}
        self._plans: deque[_Plan] = deque()
        self._stopping = asyncio.Event()
        self._counter = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- scripting -----------------------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None, message: str = "") -> None:
        """Answer the next `times` requests with `status` (a Retry-After header and `message` when given)."""
        self._plans.extend(_Plan(status, retry_after, message) for _ in range(times))

    def hang_next(self, times: int = 1) -> None:
        """Never answer the next `times` requests (until the client gives up or the server stops)."""
        self._plans.extend(_Plan(0) for _ in range(times))

    def fail_key(self, api_key: str, status: int = 401) -> None:
        """Answer every request made with `api_key` with `status`."""
        self.key_failures[api_key] = status

    def authorizations(self) -> list[str]:
        """The bearer token of each recorded request, in order."""
        return [r["authorization"].removeprefix("Bearer ") for r in self.requests]

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on 127.0.0.1 on a free port; return the base URL, e.g. `http://127.0.0.1:PORT/v1`."""
        self._stopping.clear()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_get("/files/drawn.png", self._drawn_file)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/audio/speech", self._speech)
        # handler_cancellation: a hung handler ends when the client hangs up, so stop() is quick
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Release hung requests and close the listener."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the endpoint --------------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if self.record:
            self.requests.append({"body": body, "authorization": authorization})
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "'messages' and 'model' are required properties.")

        key = authorization.removeprefix("Bearer ")
        status = self.key_failures.get(key)
        if status is not None:
            # the real API echoes a masked key; the full key here lets tests prove it is never logged
            return _error(status, f"Incorrect API key provided: {key}.")
        if self._plans:
            plan = self._plans.popleft()
            if plan.status == 0:
                await self._stopping.wait()
                return _error(503, "The server is shutting down.")
            return _error(plan.status, plan.message or f"Planned failure {plan.status}.", plan.retry_after)

        if self.context_limit is not None:
            size = sum(len(_text_of(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
            if size > self.context_limit and self.overflow_empty:
                return await self._empty_stream(request, body)
            if size > self.context_limit:
                message = (
                    f"This model's maximum context length is {self.context_limit} tokens. Please reduce the length."
                )
                return _error(400, message, code="context_length_exceeded")
        delay = self.latency + self.model_latency.get(str(body["model"]), 0.0)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        self._counter += 1
        ident = f"chatcmpl-fake{self._counter}"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        cut = int(limit / self.tokens_per_char) if isinstance(limit, int) and self.tokens_per_char > 0 else None
        if self.loop_forever and body.get("stream"):
            return await self._loop(request, body, ident, cut)
        reply = self.reply_fn(body)
        if isinstance(reply, FakeToolCalls):
            return await self._tool_reply(request, body, ident, reply)
        text = reply
        if self.loop_forever:
            text = self.filler * (1 + (cut or 100_000) // len(self.filler))
        finish = "stop"
        if cut is not None and len(text) > cut:
            text, finish = text[:cut], "length"
        if body.get("stream"):
            return await self._stream(request, body, ident, text, finish)
        completion = _completion(ident, body["model"], text, body["messages"], self.tokens_per_char)
        completion["choices"][0]["finish_reason"] = finish
        if self.reasoning:
            completion["choices"][0]["message"]["reasoning_content"] = self.reasoning
        return web.Response(body=json.dumps(completion).encode(), content_type="application/json")

    async def _tool_reply(
        self, request: web.Request, body: dict[str, Any], ident: str, reply: FakeToolCalls
    ) -> web.StreamResponse:
        """A reply asking for tool calls, streamed or as one JSON completion (finish_reason "tool_calls")."""
        ids = [f"call_fake{self._counter}_{i}" if call.id == "" else call.id for i, call in enumerate(reply.calls)]
        if body.get("stream"):
            fragments = _tool_fragments(reply, ids)
            return await self._stream(request, body, ident, reply.text, "tool_calls", fragments)
        entries = [_tool_entry(call, call_id) for call, call_id in zip(reply.calls, ids, strict=True)]
        counted = reply.text + "".join(call.arguments_text() for call in reply.calls)
        completion = _completion(ident, body["model"], counted, body["messages"], self.tokens_per_char)
        completion["choices"][0]["message"] |= {"content": reply.text or None, "tool_calls": entries}
        completion["choices"][0]["finish_reason"] = "tool_calls"
        return web.Response(body=json.dumps(completion).encode(), content_type="application/json")

    async def _empty_stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """HTTP 200 with no text at all, then [DONE]: how llama.cpp answers a prompt over its context."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _loop(
        self, request: web.Request, body: dict[str, Any], ident: str, cut: int | None
    ) -> web.StreamResponse:
        """A looping model: filler chunks until `cut` characters or until the client hangs up."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        self.loop_chunks_sent = 0
        self.loops_active += 1
        try:
            return await self._generate(response, body, ident, cut)
        finally:  # also when the client hung up and aiohttp cancelled the handler
            self.loops_active -= 1

    async def _generate(
        self, response: web.StreamResponse, body: dict[str, Any], ident: str, cut: int | None
    ) -> web.StreamResponse:
        created, sent = int(time.time()), 0
        while cut is None or sent < cut:
            piece = self.filler if cut is None else self.filler[: cut - sent]
            delta = {"content": piece}
            data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body["model"]}
            data["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
            try:
                await response.write(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")
            except (ConnectionError, RuntimeError):  # the client stopped reading: the generation ends
                return response
            sent += len(piece)
            self.loop_chunks_sent += 1
            await asyncio.sleep(0.001)  # a model takes time per token; also lets a hang-up be noticed
        end = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body["model"]}
        end["choices"] = [{"index": 0, "delta": {}, "finish_reason": "length"}]
        await response.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        ident: str,
        text: str,
        finish_reason: str = "stop",
        tool_fragments: Sequence[list[dict[str, Any]]] = (),
    ) -> web.StreamResponse:
        model = body["model"]
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            data = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

        step = max(1, self.chunk_chars)
        frames = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        frames += [
            chunk({"reasoning_content": self.reasoning[i : i + step]}, None)
            for i in range(0, len(self.reasoning), step)
        ]
        frames += [chunk({"content": text[i : i + step]}, None) for i in range(0, len(text), step)]
        frames += [chunk({"tool_calls": fragment}, None) for fragment in tool_fragments]
        if self.finish_reason:
            frames.append(chunk({}, finish_reason))
        if self.stream_error:
            error = {"error": {"message": self.stream_error, "type": "server_error", "code": 500}}
            frames = [b"data: " + json.dumps(error).encode() + b"\n\n"]
        if self.break_stream_after is not None:
            # a dropped connection: neither the rest of the answer nor [DONE] arrives
            frames = frames[: 1 + self.break_stream_after]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") and self.break_stream_after is None:
            usage = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            usage |= {"choices": [], "usage": _usage(body["messages"], text, self.tokens_per_char)}
            frames.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
        if self.send_done and self.break_stream_after is None:
            frames.append(b"data: [DONE]\n\n")

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if self.chunk_delay:
            for frame in frames:
                await response.write(frame)
                await asyncio.sleep(self.chunk_delay)
        else:
            await response.write(b"".join(frames))
        if self.break_stream_after is not None:
            # a proxy or the provider dropping the connection mid-answer
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _images(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.image_requests.append({"body": body, "authorization": request.headers.get("Authorization", "")})
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key in self.key_failures:
            return _error(self.key_failures[key], "Incorrect API key provided.")
        if self._plans:
            plan = self._plans.popleft()
            return _error(plan.status, f"Planned failure {plan.status}.", plan.retry_after)
        if self.image_format == "url":
            host, port = request.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
            item = {"url": f"http://{host}:{port}/files/drawn.png", "revised_prompt": body.get("prompt")}
        else:
            item = {"b64_json": base64.b64encode(TINY_PNG).decode(), "revised_prompt": body.get("prompt")}
        return web.json_response({"created": int(time.time()), "data": [item]})

    async def _drawn_file(self, request: web.Request) -> web.Response:
        return web.Response(body=TINY_PNG, content_type="image/png")

    async def _planned_or_refused(self, authorization: str) -> web.Response | None:
        """The answer a failing key or a queued plan (error or hang) asks for, else None."""
        key = authorization.removeprefix("Bearer ")
        if key in self.key_failures:
            return _error(self.key_failures[key], f"Incorrect API key provided: {key}.")
        if self._plans:
            plan = self._plans.popleft()
            if plan.status == 0:
                await self._stopping.wait()
                return _error(503, "The server is shutting down.")
            return _error(plan.status, plan.message or f"Planned failure {plan.status}.", plan.retry_after)
        return None

    async def _transcriptions(self, request: web.Request) -> web.Response:
        """`POST /v1/audio/transcriptions` (multipart): records the upload and answers `transcript`."""
        authorization = request.headers.get("Authorization", "")
        try:
            form = await request.post()
        except ValueError:
            return _error(400, "Could not parse multipart form.")
        upload = form.get("file")
        file = upload.file.read() if isinstance(upload, web.FileField) else b""
        self.transcription_requests.append(
            {
                "model": form.get("model"),
                "language": form.get("language"),
                "response_format": form.get("response_format"),
                "file": file,
                "filename": upload.filename if isinstance(upload, web.FileField) else "",
                "authorization": authorization,
            }
        )
        refused = await self._planned_or_refused(authorization)
        if refused is not None:
            return refused
        if not file or not form.get("model"):
            return _error(400, "'file' and 'model' are required.")
        return web.json_response({"text": self.transcript})

    async def _speech(self, request: web.Request) -> web.Response:
        """`POST /v1/audio/speech` (JSON): a tone of `speech_seconds(input)` in the requested format."""
        authorization = request.headers.get("Authorization", "")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        self.speech_requests.append({"body": body, "authorization": authorization})
        refused = await self._planned_or_refused(authorization)
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("input"), str) or not body.get("model"):
            return _error(400, "'input' and 'model' are required properties.")
        fmt = body.get("response_format", "mp3")
        if fmt not in ("mp3", "wav"):
            return _error(400, f"response_format {fmt!r} is not supported by the fake.")
        audio = await asyncio.to_thread(tone_file, speech_seconds(body["input"]), fmt)
        return web.Response(body=audio, content_type="audio/mpeg" if fmt == "mp3" else "audio/wav")


TINY_PNG = tiny_png()
SPEECH_RATE = 24_000


def speech_seconds(text: str) -> float:
    """How long the fake's speech for `text` plays: 0.08 s a character, at least 0.3 s."""
    return max(0.3, 0.08 * len(text))


def tone_file(seconds: float, fmt: str, frequency: float = 330.0) -> bytes:
    """A sine tone of `seconds` as a WAV or MP3 file (FFmpeg's encoder through PyAV for MP3)."""
    count = int(seconds * SPEECH_RATE)
    samples = array.array("h", (int(10000 * math.sin(2 * math.pi * frequency * n / SPEECH_RATE)) for n in range(count)))
    if fmt == "wav":
        output = io.BytesIO()
        with wave.open(output, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(SPEECH_RATE)
            wav.writeframes(samples.tobytes())
        return output.getvalue()
    output = io.BytesIO()
    with av.open(output, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SPEECH_RATE, layout="mono")
        frame = av.AudioFrame(format="s16", layout="mono", samples=count)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = SPEECH_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return output.getvalue()


def _tool_entry(call: FakeCall, call_id: str | None) -> dict[str, Any]:
    """One `message.tool_calls` entry of a JSON completion."""
    entry: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": call.arguments_text()}}
    return {"id": call_id, **entry} if call_id is not None else entry


def _tool_fragments(reply: FakeToolCalls, ids: list[str | None]) -> list[list[dict[str, Any]]]:
    """The `delta.tool_calls` lists of a streamed tool reply, one per chunk, as OpenAI sends them."""
    fragments: list[list[dict[str, Any]]] = []
    step = max(1, reply.arguments_chunk)
    for index, (call, call_id) in enumerate(zip(reply.calls, ids, strict=True)):
        head = _tool_entry(call, call_id)
        pieces = [head]
        if not reply.whole:
            arguments, head["function"]["arguments"] = head["function"]["arguments"], ""
            pieces += [{"function": {"arguments": arguments[i : i + step]}} for i in range(0, len(arguments), step)]
        for piece in pieces:
            if reply.indexed:
                piece["index"] = index
            fragments.append([piece])
    return fragments


def _usage(messages: list[Any], text: str, per_char: float) -> dict[str, int]:
    # `per_char` tokens a character of text, whatever the character: good enough for a fake
    prompt = math.ceil(sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict)) * per_char) + 1
    completion = math.ceil(len(text) * per_char) + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(ident: str, model: str, text: str, messages: list[Any], per_char: float) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(messages, text, per_char),
    }


def _error(status: int, message: str, retry_after: float | None = None, code: str | None = None) -> web.Response:
    kind, default_code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    code = code or default_code
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json", headers=headers
    )
