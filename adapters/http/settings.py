"""`[http]` settings: v2's HTTP API (`POST /v1/chat`, `POST /v2/chat`, `GET /v2/chat/response`)."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from adapters.listen import LOOPBACK
from core.config import Port, Section


class HttpSettings(Section):
    """`[http]`: v2's HTTP API; a `token` is required when it listens beyond loopback."""

    enable: bool = True
    # v2 defaulted to "0.0.0.0" with no password at all; this one stays on the machine unless told.
    host: str = "127.0.0.1"
    port: Port = 8080  # v2's default
    token: SecretStr = Field(default=SecretStr(""), validate_default=True)
    debug: bool = False  # v2's key: log each request and answer in full

    @field_validator("token")
    @classmethod
    def _token_beyond_loopback(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        host = info.data.get("host", "127.0.0.1")
        if host not in LOOPBACK and not value.get_secret_value():
            raise ValueError(
                f"监听 {host} 时必须设置访问令牌，否则任何人都能用你的账号聊天 "
                "(required when host is not 127.0.0.1: anyone could chat on your account)"
            )
        return value
