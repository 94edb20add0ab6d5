"""A fake QQ open platform (official bot API v2): token endpoint, REST, rich media, WS gateway and WebHook sender."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

Json = dict[str, Any]

OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME, OP_RECONNECT = 0, 1, 2, 6, 7
OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK, OP_CALLBACK_ACK, OP_VALIDATION = 9, 10, 11, 12, 13

CLOSE_BAD_OPCODE = 4001
CLOSE_BAD_PAYLOAD = 4002
CLOSE_AUTH_FAILED = 4004
CLOSE_BAD_SESSION = 4006
CLOSE_BAD_SEQ = 4007
CLOSE_BAD_SHARD = 4010
CLOSE_BAD_INTENT = 4013
# Only "sending too fast" and "connection expired" keep the session resumable; any other code the fake closes
# with (4006/4007, 4900-4913, 4914/4915, ...) also forgets the session, so a later Resume is refused with 4006.
RESUMABLE_CLOSE_CODES = frozenset({4008, 4009})

CODE_BAD_CREDENTIALS = 100016
CODE_TOKEN_INVALID = 11241
CODE_DUPLICATE_SEQ = 40054005
CODE_LIMIT = 22009
CODE_URL = 40054010
CODE_MEDIA_FETCH = 304082
# The real codes for a malformed body, an unknown/expired/foreign msg_id or file_info are not documented;
# this fake answers all of them with HTTP 400 and this code of its own (the message says which case it was).
CODE_BAD_REQUEST = 40034001

MAX_REPLIES = 5
TOKEN_GRACE = 60.0  # a token request in the last 60 s of a token's life gets a new one; the old stays valid
_URL = re.compile(r"https?://|\b[a-z0-9-]+\.[a-z]{2,}\b", re.IGNORECASE | re.ASCII)
_CHINA = timezone(timedelta(hours=8))


def ed25519_key(secret: str) -> Ed25519PrivateKey:
    """The bot's WebHook signing key: seed = the secret repeated to at least 32 chars, cut to 32 bytes."""
    if not secret:
        raise ValueError("empty secret")
    seed = secret
    while len(seed) < 32:
        seed += secret
    return Ed25519PrivateKey.from_private_bytes(seed[:32].encode())


def has_url(text: str) -> bool:
    """Whether the platform's URL detector would refuse this text (schemes and bare `word.word` domains)."""
    return bool(_URL.search(text))


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)


def voice_attachment(url: str, wav_url: str = "", asr_text: str = "") -> Json:
    """A voice attachment as the platform sends it: `url` is the silk, `voice_wav_url` the same voice as WAV."""
    attachment: Json = {"content_type": "voice", "filename": "voice.amr", "size": 0, "url": url}
    if wav_url:
        attachment["voice_wav_url"] = wav_url
    attachment["asr_refer_text"] = asr_text
    return attachment


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, dumps=_dumps)


def _now_iso() -> str:
    return datetime.now(_CHINA).isoformat(timespec="seconds")


@dataclass(eq=False)
class _Session:
    """One gateway session of one shard: its seq counter and every dispatch it carried (for Resume)."""

    session_id: str
    shard: int
    seq: int = 0
    log: list[Json] = field(default_factory=list)
    valid: bool = True


@dataclass(eq=False)
class _Link:
    """One gateway socket; it belongs to a session once it has identified or resumed."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    session: _Session | None = None


@dataclass
class _Incoming:
    """A message the platform delivered, which the bot may passively reply to."""

    scope: str
    target: str
    envelope: Json
    shard: int
    at: float


class FakeQQ:
    """Behaves like the QQ open platform as a bot sees it, on one aiohttp server on 127.0.0.1.

    Token: `POST /app/getAppAccessToken` issues `tok-<n>` (new ones listed in `tokens_issued`); the same token
    comes back until fewer than 60 s of it remain, so a `token_ttl` of 60 or less makes every call issue one.
    REST calls (recorded in `requests`) need `Authorization: QQBot <live token>`. Sends are checked like the
    platform does (URL detector, msg_seq dedupe, 5 replies per msg_id, reply window, no active messages unless
    `allow_active`); accepted ones go to `messages`, refused ones to `rejected`. Uploads really fetch the URL.

    Gateway `/websocket/`: Hello, then Identify (→ READY) or Resume (→ replay + RESUMED); each shard has its own
    session, seq counter and event log. Pushed events are logged and sent when the shard is connected.

    Faults: `token_answers` / `gateway_answers` are raw (status, body) answers given before the normal ones;
    `send_raw` puts any frame on a shard's socket; `drop` cuts it; `close_socket` closes it with a code;
    `post_raw` sends a webhook request with arbitrary header bytes.
    """

    def __init__(self, appid: str, secret: str, shards: int = 1, token_ttl: int = 7200) -> None:
        self.appid = appid
        self.secret = secret
        self.shards = shards
        self.token_ttl = token_ttl
        self.heartbeat_interval_ms = 45000
        self.ack_heartbeats = True
        self.allow_active = False
        self.reply_window = {"group": 300.0, "user": 3600.0}
        self.fetch_timeout = 5.0
        self.webhook_timeout = 5.0
        self.fail_sends: list[tuple[int, Json]] = []
        self.tokens_issued: list[str] = []
        self.requests: list[Json] = []
        self.messages: list[Json] = []
        self.rejected: list[Json] = []
        self.uploads: list[Json] = []
        self.identifies: list[Json] = []
        self.resumes: list[Json] = []
        self.handshakes: list[Json] = []
        self.heartbeats = 0
        self.connections = 0  # gateway sockets ever accepted: a reconnect shows up here
        self.token_answers: list[tuple[int, bytes]] = []  # raw answers the token endpoint gives first
        self.gateway_answers: list[tuple[int, bytes]] = []  # raw answers /gateway(/bot) gives first
        self.heartbeat_seqs: list[Any] = []
        self.webhook_replies: list[tuple[int, str]] = []
        self.incoming: dict[str, _Incoming] = {}
        self.port = 0
        self.base_url = ""
        self._tokens: dict[str, float] = {}
        self._token_ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._msg_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._sent_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._sessions: dict[str, _Session] = {}
        self._current: dict[int, _Session] = {}
        self._links: list[_Link] = []
        self._event_envelopes: set[str] = set()
        self._replies: dict[str, set[int]] = {}
        self._file_infos: dict[str, str] = {}
        self._dispatch_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    # ---- lifetime ---------------------------------------------------------------------------------------------

    async def start(self, port: int | None = None) -> str:
        """Listen on 127.0.0.1 (the previous port again after a stop); return `http://127.0.0.1:PORT`."""
        app = web.Application()
        app.router.add_post("/app/getAppAccessToken", self._token)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/bot", self._gateway)
        app.router.add_post("/v2/{kind:groups|users}/{target}/messages", self._send_message)
        app.router.add_post("/v2/{kind:groups|users}/{target}/files", self._upload)
        app.router.add_get("/websocket", self._websocket)
        app.router.add_get("/websocket/", self._websocket)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        port = self.port if port is None else port
        await web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self.base_url

    async def stop(self) -> None:
        """Close every gateway socket with 1001, stop listening and close the client session (sessions are kept)."""
        await asyncio.gather(
            *(link.ws.close(code=WSCloseCode.GOING_AWAY) for link in list(self._links)), return_exceptions=True
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _session_client(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession()
        return self._client

    # ---- waiting ----------------------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def wait_messages(self, count: int, timeout: float = 5.0) -> list[Json]:
        """Wait until at least `count` messages were accepted; returns all of them."""
        await self._wait(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)

    async def wait_uploads(self, count: int, timeout: float = 5.0) -> list[Json]:
        """Wait until at least `count` uploads were attempted (fetched or failed); returns all of them."""
        await self._wait(lambda: len(self.uploads) >= count, timeout)
        return list(self.uploads)

    async def wait_ready(self, count: int = 1, timeout: float = 5.0) -> list[Json]:
        """Wait until `count` READY/RESUMED handshakes have completed in total; returns `handshakes`."""
        await self._wait(lambda: len(self.handshakes) >= count, timeout)
        return list(self.handshakes)

    async def wait_heartbeats(self, count: int, timeout: float = 5.0) -> int:
        """Wait until at least `count` heartbeats (op 1) have arrived; returns the count."""
        await self._wait(lambda: self.heartbeats >= count, timeout)
        return self.heartbeats

    async def wait_disconnected(self, shard: int = 0, timeout: float = 5.0) -> None:
        """Wait until no socket of `shard` is open."""
        await self._wait(lambda: shard not in self.connected_shards, timeout)

    @property
    def connected_shards(self) -> list[int]:
        """The shards that have an open, identified (or resumed) socket."""
        return sorted({link.session.shard for link in self._links if link.session is not None and not link.ws.closed})

    # ---- token ------------------------------------------------------------------------------------------------

    def _token_live(self, token: str) -> bool:
        expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def revoke_tokens(self) -> None:
        """Make every issued token invalid at once (the next REST call or Identify is refused)."""
        self._tokens.clear()

    async def _token(self, request: web.Request) -> web.Response:
        if self.token_answers:
            status, raw = self.token_answers.pop(0)
            return web.Response(status=status, body=raw, content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or str(body.get("appId")) != self.appid
            or not secrets.compare_digest(str(body.get("clientSecret")), self.secret)
        ):
            return _error(401, CODE_BAD_CREDENTIALS, "invalid appid or secret")
        now = time.monotonic()
        live = [(expiry, token) for token, expiry in self._tokens.items() if expiry > now]
        if live and max(live)[0] - now > TOKEN_GRACE:
            expiry, token = max(live)
            return web.json_response({"access_token": token, "expires_in": str(int(expiry - now))})
        token = f"tok-{next(self._token_ids)}"
        self._tokens[token] = now + self.token_ttl
        self.tokens_issued.append(token)
        # expires_in is a string on the real platform
        return web.json_response({"access_token": token, "expires_in": str(self.token_ttl)})

    # ---- REST -------------------------------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        authorized = header.startswith("QQBot ") and self._token_live(header[len("QQBot ") :])
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "union_appid": request.headers.get("X-Union-Appid"),
                "authorized": authorized,
            }
        )
        return None if authorized else _error(401, CODE_TOKEN_INVALID, "token invalid")

    async def _gateway(self, request: web.Request) -> web.Response:
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        if self.gateway_answers:
            status, raw = self.gateway_answers.pop(0)
            return web.Response(status=status, body=raw, content_type="application/json")
        answer: Json = {"url": f"ws://127.0.0.1:{self.port}/websocket/"}
        if request.path == "/gateway/bot":
            answer["shards"] = self.shards
            answer["session_start_limit"] = {
                "total": 1000,
                "remaining": max(0, 1000 - len(self.identifies)),
                "reset_after": 86_400_000,
                "max_concurrency": 1,
            }
        return web.json_response(answer)

    async def _json_body(self, request: web.Request) -> Json | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def _reject(self, record: Json, status: int, code: int, message: str) -> web.Response:
        async with self._changed:
            self.rejected.append({**record, "status": status, "code": code, "message": message})
            self._changed.notify_all()
        return _error(status, code, message)

    def _reply_problem(self, scope: str, target: str, body: Json) -> tuple[int, str] | None:
        """Why a send may not go out as a passive reply (or as an active one), or None when it may."""
        msg_id, event_id = body.get("msg_id"), body.get("event_id")
        if not msg_id and not event_id:
            return None if self.allow_active else (CODE_LIMIT, "msg limit exceed")
        if msg_id:
            incoming = self.incoming.get(str(msg_id))
            if incoming is None or incoming.scope != scope or incoming.target != target:
                return CODE_BAD_REQUEST, "msg_id 无效"
            if time.monotonic() - incoming.at > self.reply_window[scope]:
                return CODE_BAD_REQUEST, "msg_id 已过期"
        elif str(event_id) not in self._event_envelopes:
            return CODE_BAD_REQUEST, "event_id 无效"
        return None

    async def _send_message(self, request: web.Request) -> web.Response:
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        scope = "group" if request.match_info["kind"] == "groups" else "user"
        target = request.match_info["target"]
        body = await self._json_body(request)
        record: Json = {"path": request.path, "scope": scope, "target": target, "body": body}
        if self.fail_sends:
            status, answer = self.fail_sends.pop(0)
            await self._reject(record, status, int(answer.get("code", 0)), str(answer.get("message", "")))
            return web.json_response(answer, status=status, dumps=_dumps)
        if body is None:
            return await self._reject(record, 400, CODE_BAD_REQUEST, "请求体不是 JSON 对象")
        msg_type = body.get("msg_type", 0)
        content = body.get("content")
        markdown = body.get("markdown")
        texts = [content] if isinstance(content, str) else []
        if isinstance(markdown, dict) and isinstance(markdown.get("content"), str):
            texts.append(markdown["content"])
        if any(has_url(text) for text in texts):
            return await self._reject(record, 400, CODE_URL, "消息发送失败，不允许发送url")
        if msg_type == 0 and not (isinstance(content, str) and content.strip()):
            return await self._reject(record, 400, CODE_BAD_REQUEST, "content 为空")
        if msg_type == 7:
            media = body.get("media")
            file_info = media.get("file_info") if isinstance(media, dict) else None
            if self._file_infos.get(str(file_info)) != scope:
                return await self._reject(record, 400, CODE_BAD_REQUEST, "file_info 无效")
        problem = self._reply_problem(scope, target, body)
        if problem is not None:
            return await self._reject(record, 400, *problem)
        reply_key = str(body.get("msg_id") or body.get("event_id") or "")
        if reply_key:
            seq = body.get("msg_seq", 1)
            seen = self._replies.setdefault(reply_key, set())
            if seq in seen:
                return await self._reject(record, 400, CODE_DUPLICATE_SEQ, "消息被去重，请检查请求msgseq")
            if len(seen) >= MAX_REPLIES:
                return await self._reject(record, 400, CODE_LIMIT, "msg limit exceed")
            seen.add(seq)
        answer = {"id": f"msg-{next(self._sent_ids)}", "timestamp": int(time.time())}
        async with self._changed:
            self.messages.append(record)
            self._changed.notify_all()
        return web.json_response(answer)

    async def _fetch(self, url: str) -> tuple[int | None, bytes]:
        """GET the media like Tencent does: (HTTP status or None when unreachable, the body)."""
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
        try:
            async with self._session_client().get(url, timeout=timeout) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None, b""

    def fetched(self, file_type: int) -> list[bytes]:
        """What Tencent fetched for every successful upload of `file_type` (1 picture, 3 voice), in order."""
        return [u["data"] for u in self.uploads if u["ok"] and u["body"].get("file_type") == file_type]

    async def _upload(self, request: web.Request) -> web.Response:
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        scope = "group" if request.match_info["kind"] == "groups" else "user"
        target = request.match_info["target"]
        body = await self._json_body(request)
        if body is None:
            return _error(400, CODE_BAD_REQUEST, "请求体不是 JSON 对象")
        srv_send = bool(body.get("srv_send_msg"))
        if srv_send and not self.allow_active:  # sending directly counts as an active message
            return _error(400, CODE_LIMIT, "msg limit exceed")
        url = body.get("url")
        status, data = await self._fetch(url) if isinstance(url, str) else (None, b"")
        ok = status is not None and 200 <= status < 300 and len(data) > 0
        record = {"path": request.path, "scope": scope, "target": target, "body": body, "url": url}
        async with self._changed:
            self.uploads.append({**record, "status": status, "size": len(data), "data": data, "ok": ok})
            self._changed.notify_all()
        if not ok:
            return _error(400, CODE_MEDIA_FETCH, "富媒体文件下载失败")
        file_info = f"fi-{next(self._file_ids)}"
        self._file_infos[file_info] = scope
        answer: Json = {"file_uuid": uuid.uuid4().hex, "file_info": file_info, "ttl": 3600}
        if srv_send:
            answer["id"] = f"msg-{next(self._sent_ids)}"
            async with self._changed:
                self.messages.append(record)
                self._changed.notify_all()
        return web.json_response(answer)

    # ---- events -----------------------------------------------------------------------------------------------

    def _envelope(self, t: str, d: Json) -> Json:
        event_id = f"{t}:{next(self._event_ids)}"
        self._event_envelopes.add(event_id)
        return {"op": OP_DISPATCH, "id": event_id, "d": d, "t": t}

    def group_at_event(
        self,
        group_openid: str,
        member_openid: str,
        content: str,
        msg_id: str | None = None,
        attachments: list[Json] | None = None,
        shard: int = 0,
        extra: Json | None = None,
    ) -> Json:
        """A GROUP_AT_MESSAGE_CREATE op-0 envelope (no `s`), registered as repliable; for WebHook tests too.

        `extra` adds fields to `d` as the platform sends them (e.g. `msg_elements`, `message_scene`, `mentions`).
        """
        msg_id = msg_id or f"ROBOT1.0_{next(self._msg_ids)}"
        d: Json = {
            "id": msg_id,
            "author": {"id": member_openid, "member_openid": member_openid},
            "content": " " + content,  # the @bot mention is cut out, leaving its trailing space
            "group_openid": group_openid,
            "group_id": group_openid,
            "timestamp": _now_iso(),
        }
        if attachments is not None:
            d["attachments"] = attachments
        d |= extra or {}
        envelope = self._envelope("GROUP_AT_MESSAGE_CREATE", d)
        self.incoming[msg_id] = _Incoming("group", group_openid, envelope, shard, time.monotonic())
        return envelope

    def c2c_event(
        self,
        user_openid: str,
        content: str,
        msg_id: str | None = None,
        attachments: list[Json] | None = None,
        shard: int = 0,
    ) -> Json:
        """A C2C_MESSAGE_CREATE op-0 envelope (no `s`), registered as repliable; for WebHook tests too."""
        msg_id = msg_id or f"ROBOT1.0_{next(self._msg_ids)}"
        d: Json = {
            "id": msg_id,
            "author": {"id": user_openid, "user_openid": user_openid},
            "content": content,
            "timestamp": _now_iso(),
        }
        if attachments is not None:
            d["attachments"] = attachments
        envelope = self._envelope("C2C_MESSAGE_CREATE", d)
        self.incoming[msg_id] = _Incoming("user", user_openid, envelope, shard, time.monotonic())
        return envelope

    async def push_group_at(
        self,
        group_openid: str,
        member_openid: str,
        content: str,
        msg_id: str | None = None,
        shard: int = 0,
        attachments: list[Json] | None = None,
        extra: Json | None = None,
    ) -> str:
        """Dispatch an @bot group message on `shard`'s session; returns its msg id."""
        envelope = self.group_at_event(group_openid, member_openid, content, msg_id, attachments, shard, extra)
        await self._dispatch(envelope, shard)
        return str(envelope["d"]["id"])

    async def push_c2c(
        self,
        user_openid: str,
        content: str,
        msg_id: str | None = None,
        shard: int = 0,
        attachments: list[Json] | None = None,
    ) -> str:
        """Dispatch a private (C2C) message on `shard`'s session; returns its msg id."""
        envelope = self.c2c_event(user_openid, content, msg_id, attachments, shard)
        await self._dispatch(envelope, shard)
        return str(envelope["d"]["id"])

    async def push_event(self, t: str, d: Json, shard: int = 0) -> int:
        """Dispatch any other event (e.g. GROUP_ADD_ROBOT; its envelope id is a valid `event_id`); returns its s."""
        return await self._dispatch(self._envelope(t, d), shard)

    async def redeliver(self, msg_id: str) -> int:
        """Deliver an already pushed message again (same envelope id and `d`, next `s`); returns the new s."""
        incoming = self.incoming[msg_id]
        return await self._dispatch(incoming.envelope, incoming.shard)

    async def _dispatch(self, envelope: Json, shard: int) -> int:
        async with self._dispatch_lock:
            session = self._current.get(shard)
            if session is None:
                raise RuntimeError(f"shard {shard} has no session yet; wait_ready() first")
            session.seq += 1
            payload = {**copy.deepcopy(envelope), "s": session.seq}
            session.log.append(payload)
            link = self._link_of(session)
            if link is not None:
                await self._send(link, payload)
            return session.seq

    # ---- gateway ----------------------------------------------------------------------------------------------

    def _link_of(self, session: _Session) -> _Link | None:
        for link in reversed(self._links):
            if link.session is session and not link.ws.closed:
                return link
        return None

    def _links_of(self, shard: int) -> list[_Link]:
        return [link for link in self._links if link.session is not None and link.session.shard == shard]

    @staticmethod
    async def _send(link: _Link, payload: Json) -> None:
        if not link.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await link.ws.send_str(_dumps(payload))

    async def _close(self, link: _Link, code: int) -> None:
        if link.session is not None and code not in RESUMABLE_CLOSE_CODES:
            link.session.valid = False
        with contextlib.suppress(ConnectionError, RuntimeError):
            await link.ws.close(code=code)

    async def close_socket(self, code: int, shard: int = 0) -> None:
        """Close `shard`'s socket with this close code (4008/4009 keep the session resumable, others forget it)."""
        for link in self._links_of(shard):
            await self._close(link, code)

    async def drop(self, shard: int = 0) -> None:
        """Cut `shard`'s socket without a close frame, like a network failure (the session stays resumable)."""
        for link in self._links_of(shard):
            if link.transport is not None:
                link.transport.abort()
        await self.wait_disconnected(shard)

    async def send_op(self, op: int, shard: int = 0, d: Any = None) -> None:
        """Send a bare op on `shard`'s socket: 7 Reconnect, or 9 Invalid Session (`d` false; forgets the session)."""
        payload: Json = {"op": op}
        if op == OP_INVALID_SESSION:
            payload["d"] = False if d is None else d
        elif d is not None:
            payload["d"] = d
        for link in self._links_of(shard):
            if op == OP_INVALID_SESSION and link.session is not None:
                link.session.valid = False
            await self._send(link, payload)

    async def send_raw(self, data: str | bytes, shard: int = 0, binary: bool = False) -> None:
        """Send one frame as it is on `shard`'s socket (bytes go out as a TEXT frame unless `binary`:
        a TEXT frame whose bytes are not UTF-8 is what a broken peer sends)."""
        for link in self._links_of(shard):
            if link.ws.closed:
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                if isinstance(data, str):
                    await link.ws.send_str(data)
                elif binary:
                    await link.ws.send_bytes(data)
                else:
                    await link.ws.send_frame(data, WSMsgType.TEXT)

    def current_seq(self, shard: int = 0) -> int:
        """The last `s` sent on `shard`'s session (0 before READY)."""
        session = self._current.get(shard)
        return session.seq if session is not None else 0

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        transport = request.transport
        link = _Link(ws, transport if isinstance(transport, asyncio.Transport) else None)
        self._links.append(link)
        self.connections += 1
        try:
            await self._send(link, {"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    frame = None
                if (
                    not isinstance(frame, dict)
                    or isinstance(frame.get("op"), bool)
                    or not isinstance(frame.get("op"), int)
                ):
                    await self._close(link, CLOSE_BAD_PAYLOAD)
                    break
                await self._on_frame(link, frame)
        finally:
            self._links.remove(link)
            await self._notify()
        return ws

    async def _on_frame(self, link: _Link, frame: Json) -> None:
        op, d = frame["op"], frame.get("d")
        if op == OP_HEARTBEAT:
            async with self._changed:
                self.heartbeats += 1
                self.heartbeat_seqs.append(d)
                self._changed.notify_all()
            if self.ack_heartbeats:
                await self._send(link, {"op": OP_HEARTBEAT_ACK})
        elif op == OP_IDENTIFY:
            await self._identify(link, d if isinstance(d, dict) else {})
        elif op == OP_RESUME:
            await self._resume(link, d if isinstance(d, dict) else {})
        else:
            await self._close(link, CLOSE_BAD_OPCODE)

    def _gateway_token_ok(self, token: Any) -> bool:
        return isinstance(token, str) and token.startswith("QQBot ") and self._token_live(token[len("QQBot ") :])

    async def _identify(self, link: _Link, d: Json) -> None:
        self.identifies.append(d)
        if not self._gateway_token_ok(d.get("token")):
            await self._close(link, CLOSE_AUTH_FAILED)
            return
        shard = d.get("shard", [0, 1])
        if (
            not isinstance(shard, list)
            or len(shard) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
            or shard[1] != self.shards
            or not 0 <= shard[0] < self.shards
        ):
            await self._close(link, CLOSE_BAD_SHARD)
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents <= 0:
            await self._close(link, CLOSE_BAD_INTENT)
            return
        async with self._dispatch_lock:
            session = _Session(f"sess-{next(self._session_ids)}", shard[0])
            self._sessions[session.session_id] = session
            self._current[session.shard] = session
            link.session = session
            session.seq += 1
            user = {"id": "bot-1", "username": "测试机器人", "bot": True}
            d_ready = {"version": 1, "session_id": session.session_id, "user": user, "shard": shard}
            await self._send(link, {"op": OP_DISPATCH, "s": session.seq, "t": "READY", "d": d_ready})
        await self._handshake("READY", session)

    async def _resume(self, link: _Link, d: Json) -> None:
        self.resumes.append(d)
        if not self._gateway_token_ok(d.get("token")):
            await self._close(link, CLOSE_AUTH_FAILED)
            return
        session = self._sessions.get(str(d.get("session_id")))
        if session is None or not session.valid:
            await self._close(link, CLOSE_BAD_SESSION)
            return
        seq = d.get("seq")
        if seq is None:
            seq = 0
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= session.seq:
            await self._close(link, CLOSE_BAD_SEQ)
            return
        async with self._dispatch_lock:
            for other in self._links:
                if other.session is session:
                    other.session = None
            link.session = session
            self._current[session.shard] = session
            for payload in session.log:
                if payload["s"] > seq:
                    await self._send(link, payload)
            session.seq += 1
            await self._send(link, {"op": OP_DISPATCH, "s": session.seq, "t": "RESUMED", "d": ""})
        await self._handshake("RESUMED", session)

    async def _handshake(self, t: str, session: _Session) -> None:
        async with self._changed:
            self.handshakes.append({"t": t, "shard": session.shard, "session_id": session.session_id})
            self._changed.notify_all()

    # ---- WebHook ----------------------------------------------------------------------------------------------

    def sign(self, timestamp: str, body: bytes) -> str:
        """The X-Signature-Ed25519 the platform puts on a callback: hex(sign(timestamp + body))."""
        return ed25519_key(self.secret).sign(timestamp.encode() + body).hex()

    async def send_webhook(
        self,
        url: str,
        payload: Json | bytes,
        sign: bool = True,
        bad_signature: bool = False,
        timestamp: str | None = None,
    ) -> tuple[int, str]:
        """POST one callback as the platform does, signed over timestamp + raw body; returns (status, body).

        `payload` may be raw bytes (sent and signed as they are); `timestamp` overrides the current time."""
        body = payload if isinstance(payload, bytes) else _dumps(payload).encode()
        timestamp = str(int(time.time())) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "QQBot-Callback",
            "X-Bot-Appid": self.appid,
            "X-Signature-Timestamp": timestamp,
        }
        if sign:
            signed = timestamp.encode() + body + (b"tampered" if bad_signature else b"")
            headers["X-Signature-Ed25519"] = ed25519_key(self.secret).sign(signed).hex()
        timeout = aiohttp.ClientTimeout(total=self.webhook_timeout)
        async with self._session_client().post(url, data=body, headers=headers, timeout=timeout) as response:
            text = await response.text()
        self.webhook_replies.append((response.status, text))
        return response.status, text

    @staticmethod
    async def post_raw(url: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        """POST with headers written byte for byte (any byte, which HTTP clients refuse to send);
        returns (status, body). `Content-Length` is added unless it or `Transfer-Encoding` is given."""
        parsed = URL(url)
        reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        try:
            lines = [f"POST {parsed.raw_path_qs} HTTP/1.1".encode(), f"Host: {parsed.host}".encode()]
            lines += [name + b": " + value for name, value in headers]
            if not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers):
                lines.append(b"Content-Length: " + str(len(body)).encode())
            lines.append(b"Connection: close")
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            with contextlib.suppress(ConnectionError):  # a server may answer and close before reading it all
                await writer.drain()
            # The answer may come before the body was read, on a connection the server keeps open for
            # the rest of it: read the head, then the body by its length.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            answer = await asyncio.wait_for(reader.readexactly(length), 10)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        return status, answer

    async def validate_webhook(self, url: str) -> Json:
        """Send the op-13 URL validation; returns `{"ok", "status", "answer"}`, ok when the answer echoes the
        plain_token and its signature over event_ts + plain_token verifies with the bot's public key."""
        plain_token = secrets.token_urlsafe(15)
        event_ts = str(int(time.time()))
        status, text = await self.send_webhook(
            url, {"op": OP_VALIDATION, "d": {"plain_token": plain_token, "event_ts": event_ts}}
        )
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = text
        ok = status == 200 and isinstance(answer, dict) and answer.get("plain_token") == plain_token
        if ok:
            try:
                signature = bytes.fromhex(str(answer.get("signature")))
                ed25519_key(self.secret).public_key().verify(signature, (event_ts + plain_token).encode())
            except (ValueError, InvalidSignature):
                ok = False
        return {"ok": ok, "status": status, "answer": answer}
