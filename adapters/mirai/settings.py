"""`[mirai]` settings: mirai-api-http, reverse WS (the bot listens) or forward WS + HTTP."""

from __future__ import annotations

from pydantic import SecretStr, field_validator

from core.config import V2_DEFAULT_API_KEY, IdList, Port, Section


class MiraiSettings(Section):
    """`[mirai]`: mirai-api-http, reverse WS (bot listens) or forward WS + HTTP (bot connects)."""

    enable: bool = True
    qq: int
    api_key: SecretStr = SecretStr(V2_DEFAULT_API_KEY)  # v2's default verifyKey; start-up warns about it
    manager_qq: IdList = ()
    reverse_ws_host: str = "0.0.0.0"
    reverse_ws_port: Port | None = None
    reverse_ws_token: str = ""
    http_url: str = "http://localhost:8080"
    ws_url: str = "http://localhost:8080"

    @field_validator("qq")
    @classmethod
    def _bot_qq(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("请填写机器人的 QQ 号 (must be the bot's QQ number)")
        return value
