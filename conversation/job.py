"""A triggered message on its way through a session queue, and the short failure texts users see."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.event import MessageEvent
from core.message import Message
from storage.admin import RateCheck

# Shown in chat instead of the real error (which goes to the log): short, and never a secret.
FAILURE_REASONS = {
    "auth": "模型账号验证失败，请联系管理员检查 API Key",
    "rate_limit": "请求太频繁，请稍后再试",
    "timeout": "模型响应超时",
    "network": "无法连接到模型服务",
    "server": "模型服务暂时不可用",
    "bad_request": "请求被模型服务拒绝",
    "context_length": "对话太长，模型装不下了，请发送“重置会话”",
    "empty": "模型没有给出回答，请换个说法再试",
    "interrupted": "模型的回答传输中断了，请再试一次",
    "unsupported": "没有可用的账号",
    "storage": "聊天记录数据库暂时无法读写",
}

# One log line per failure kind, so the log tells them apart at a glance (the details follow it).
FAILURE_LOGS = {
    "auth": "the model account's key was rejected",
    "rate_limit": "the model service rate-limited us",
    "timeout": "the model did not answer in time",
    "network": "could not connect to the model service",
    "server": "the model service failed",
    "bad_request": "the model service refused the request",
    "context_length": "the prompt is over the model's context",
    "empty": "the model gave an empty answer",
    "interrupted": "the answer's stream broke off",
    "unsupported": "no account can do this",
    "storage": "the history database failed",
}


@dataclass(slots=True)
class Job:
    """One triggered message waiting in its session's queue."""

    event: MessageEvent
    prompt: str
    session_key: str
    admin: bool = False
    command: Handler | None = None
    argument: str = ""
    rate: RateCheck | None = None  # the rate limit check that let it in, when a limit applies
    quota: str = ""  # the limits it counted against: "" messages, storage.admin.DRAW pictures
    spoken: bool = False  # the prompt is a voice message's transcript


# A command: (job, argument) -> the reply, as text or as a message (a drawn picture).
Handler = Callable[[Job, str], Awaitable["str | Message"]]


def failure_text(error_format: str, kind: str) -> str:
    """`[response] error_format` with `{exc}` replaced by the short reason for failure `kind`."""
    return error_format.replace("{exc}", FAILURE_REASONS.get(kind, FAILURE_REASONS["server"]))
