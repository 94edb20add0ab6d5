"""The project's one exception tree."""

from __future__ import annotations

import re

# Characters that could forge or hide log lines: C0 controls except tab (newline, carriage return,
# ESC of terminal sequences), DEL and C1, lone surrogates (undecodable bytes), zero-width spaces and
# marks, line/paragraph separators, bidirectional overrides and isolates, the BOM.
_CONTROL = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def escape_control(text: str) -> str:
    """`text` with every control or invisible character written as an escape (`\\n`, `\\x1b`, `\\u2028`)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape", "backslashreplace").decode("ascii"), text)


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
        """The single line shown to the user, naming the key and where it is.

        Keys and values come from the user's file: control characters are escaped, so the line can
        neither be split into forged lines nor clear the terminal.
        """
        where = f" (第 {self.line} 行 / line {self.line})" if self.line else ""
        return escape_control(f"配置错误 config error: {self.key}{where}: {self.problem}")


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


class MessageSwallowedError(AdapterError):
    """QQ swallowed a message even when resent as a forward message; the sender may try another form."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        super().__init__(f"message swallowed (messageId {message_id})")


class LLMError(BotError):
    """A model request failed; `kind` names the failure (see llm.base.FailureKind), `detail` is short and secret-free.

    `partial` is set when part of the answer had already been streamed out to the caller.
    """

    def __init__(
        self, kind: str = "server", detail: str = "", status: int | None = None, *, partial: bool = False
    ) -> None:
        self.kind = kind
        self.detail = detail
        self.status = status
        self.partial = partial
        super().__init__(f"LLM request failed ({kind}{': ' + detail if detail else ''})")


class StorageError(BotError):
    """The history database could not be read or written."""
