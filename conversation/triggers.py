"""When the bot answers: mention rules, prefixes and ignore patterns, checked once per message."""

from __future__ import annotations

import re

from core.config import TriggerSettings
from core.event import ChatType, MessageEvent
from core.message import At, Message, Quote, describe


def strip_mentions(message: Message, self_id: str) -> Message:
    """The message without @bot mentions and quote references (they are not part of the prompt)."""
    return tuple(
        seg for seg in message if not (isinstance(seg, Quote) or (isinstance(seg, At) and seg.target == self_id))
    )


class TriggerRules:
    """`[trigger]` compiled once: `prompt_of()` gives the text to answer, or None to stay silent."""

    def __init__(self, settings: TriggerSettings) -> None:
        self.require_mention = settings.require_mention
        self.friend_prefixes = _longest_first(settings.prefix + settings.prefix_friend)
        self.group_prefixes = _longest_first(settings.prefix + settings.prefix_group)
        self.ignore = [re.compile(pattern) for pattern in settings.ignore_regex]

    def prompt_of(self, event: MessageEvent, nickname: str = "") -> str | None:
        """The user's text with mention and prefix removed, or None when the bot should not answer.

        `nickname` is the bot's name on the platform: with `require_mention = "mention"` a group
        message that starts with it counts as a mention.
        """
        text = describe(strip_mentions(event.message, event.self_id)).strip()
        if any(pattern.search(text) for pattern in self.ignore):
            return None
        if event.chat_type is ChatType.GROUP:
            named = self.require_mention == "mention" and bool(nickname) and text.startswith(nickname)
            if named:
                text = text[len(nickname) :].lstrip(" ,，:：、")
            elif self.require_mention != "none" and not event.to_me:
                return None
            prefixes = self.group_prefixes
        else:
            prefixes = self.friend_prefixes
        for prefix in prefixes:
            if text.startswith(prefix):
                prompt = text[len(prefix) :].strip()
                # ignore_regex is matched with and without the prefix: "^#" style patterns mean the text
                return None if any(pattern.search(prompt) for pattern in self.ignore) else prompt
        return None


def _longest_first(prefixes: list[str]) -> list[str]:
    """A missing prefix list means no prefix is needed; try longer prefixes before their heads."""
    unique = list(dict.fromkeys(prefixes)) or [""]
    return sorted(unique, key=len, reverse=True)
