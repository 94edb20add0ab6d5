"""The project's one exception tree."""

from __future__ import annotations


class BotError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(BotError):
    """A config value is missing or wrong; `key` is `section.key`, `line` its line in the file."""

    def __init__(self, key: str, problem: str, line: int | None = None) -> None:
        self.key = key
        self.problem = problem
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The single line shown to the user, naming the key and where it is."""
        where = f" (第 {self.line} 行 / line {self.line})" if self.line else ""
        return f"配置错误 config error: {self.key}{where}: {self.problem}"


class AdapterError(BotError):
    """A platform link failed or refused an action."""


class NotConnectedError(AdapterError):
    """The platform link is down right now; the caller may queue and retry."""


class ActionFailedError(AdapterError):
    """The platform answered an action with an error code."""

    def __init__(self, action: str, code: int | str, detail: str = "") -> None:
        self.action = action
        self.code = code
        self.detail = detail
        super().__init__(f"{action} failed with code {code}: {detail}")


class LLMError(BotError):
    """Every configured model account failed for one request."""


class StorageError(BotError):
    """The history database could not be read or written."""
