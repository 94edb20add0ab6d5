"""`[qqbot]` settings: the official QQ bot API (QQ 开放平台) and its picture server."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from core.config import IdList, Port, Section


class QQBotResourceSettings(Section):
    """`[qqbot.resource]`: the built-in file server Tencent fetches pictures from."""

    host: str = "0.0.0.0"
    port: Port = 8081
    resource_path: str = "/qqbot-files"
    public_url: str = ""  # how Tencent reaches host:port, e.g. "https://bot.example.com"; empty: server off
    keep_seconds: int = Field(600, ge=60)


class QQBotSettings(Section):
    """`[qqbot]`: the official QQ bot API (QQ 开放平台), by gateway WebSocket or webhook."""

    enable: bool = True
    appid: str
    secret: SecretStr
    sandbox: bool = False
    mode: Literal["websocket", "webhook"] = "websocket"
    shards: int = Field(1, ge=1)
    shard_index: int | None = Field(None, ge=0)  # None: this process runs every shard
    webhook_host: str = "0.0.0.0"
    webhook_port: Port = 8080
    webhook_path: str = "/qqbot"
    api_base: str = ""
    token_url: str = "https://bots.qq.com/app/getAppAccessToken"
    manager_openids: IdList = ()
    uploader: str = ""  # "module:function": an async function taking bytes, returning a public URL
    resource: QQBotResourceSettings = Field(default_factory=QQBotResourceSettings)

    @field_validator("appid", mode="before")
    @classmethod
    def _appid_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def base_url(self) -> str:
        """`api_base`, else production or the sandbox."""
        if self.api_base:
            return self.api_base.rstrip("/")
        return "https://sandbox.api.sgroup.qq.com" if self.sandbox else "https://api.sgroup.qq.com"

    @property
    def manager_qq(self) -> tuple[str, ...]:
        """Admins, under the name every adapter reads."""
        return self.manager_openids
