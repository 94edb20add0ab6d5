"""`[milky]` settings: a Milky implementation (LLBot)."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from core.config import IdList, Port, Section


class MilkySettings(Section):
    """`[milky]`: a Milky implementation (LLBot): API over HTTP, events by WS, SSE or webhook."""

    enable: bool = True
    url: str = "http://localhost:3010"
    access_token: SecretStr = SecretStr("")
    event_transport: Literal["ws", "sse", "webhook"] = "ws"
    webhook_host: str = "0.0.0.0"
    webhook_port: Port | None = None
    manager_qq: IdList = ()
