"""`[satori]` settings: a Satori server (LLBot, Chronocat, Koishi)."""

from __future__ import annotations

from pydantic import SecretStr

from core.config import IdList, Section


class SatoriSettings(Section):
    """`[satori]`: a Satori server (LLBot, Chronocat, Koishi): events over WS, messages over HTTP."""

    enable: bool = True
    url: str = "http://localhost:5600"
    token: SecretStr = SecretStr("")
    platform: str = ""  # learned from READY's logins when empty; a set value wins
    self_id: str = ""
    manager_qq: IdList = ()
