"""`[onebot]` settings: OneBot 11 (LLBot, NapCat) in any of its four connection modes."""

from __future__ import annotations

from pydantic import SecretStr

from core.config import IdList, Port, Section


class OneBotSettings(Section):
    """`[onebot]`: OneBot 11 (LLBot, NapCat); the mode follows from which keys are set."""

    enable: bool = True
    qq: int = 0  # optional: learned from X-Self-ID / get_login_info
    manager_qq: IdList = ()
    access_token: SecretStr = SecretStr("")
    ws_url: str = ""
    http_url: str = ""
    http_post_host: str = "0.0.0.0"
    http_post_port: Port | None = None
    secret: SecretStr = SecretStr("")
    reverse_ws_host: str = "0.0.0.0"
    reverse_ws_port: Port = 8566

    @property
    def mode(self) -> str:
        """ "forward-ws", "http-post", "http-sse" or "reverse-ws", by DESIGN's rules."""
        if self.ws_url:
            return "forward-ws"
        if self.http_url:
            return "http-post" if self.http_post_port else "http-sse"
        return "reverse-ws"
