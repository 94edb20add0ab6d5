"""Events adapters hand to the conversation layer, and where replies go."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.message import Message


class ChatType(StrEnum):
    """Where a message was said."""

    PRIVATE = "private"  # a friend chat
    GROUP = "group"
    TEMP = "temp"  # a group-temporary chat with a member who is not a friend
    STRANGER = "stranger"


class Role(StrEnum):
    """The sender's standing in a group."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send a message: the adapter instance and the chat on it.

    `message_id` names the message being answered, when there is one; it is not part of the
    chat's identity (equal targets may carry different ids).
    """

    adapter: str
    chat_type: ChatType
    user_id: str = ""
    group_id: str = ""
    message_id: str = field(default="", compare=False)

    def describe(self) -> str:
        """A short form for logs, e.g. `mirai group 123` or `mirai private 456`."""
        if self.chat_type is ChatType.GROUP:
            return f"{self.adapter} group {self.group_id}"
        if self.chat_type is ChatType.TEMP:
            return f"{self.adapter} temp {self.user_id}@{self.group_id}"
        return f"{self.adapter} {self.chat_type} {self.user_id}"


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """One incoming chat message, already decoded from the wire.

    `platform` names the id space ("qq" for QQ-number protocols, "qqbot" for openids), so a
    user keeps the same history when the bot moves from one QQ protocol to another.
    """

    adapter: str
    platform: str
    self_id: str
    chat_type: ChatType
    user_id: str
    message: Message
    message_id: str = ""
    group_id: str = ""
    to_me: bool = False
    sender_name: str = ""
    sender_role: Role = Role.MEMBER
    time: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def target(self) -> Target:
        """Where a reply to this message goes."""
        return Target(self.adapter, self.chat_type, self.user_id, self.group_id, self.message_id)

    @property
    def is_group(self) -> bool:
        """True for messages said in a group (not group-temp chats)."""
        return self.chat_type is ChatType.GROUP


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A friend request or a group invitation, answered by the adapter per `[system]`."""

    adapter: str
    kind: str  # "friend" | "group_invite"
    user_id: str
    group_id: str = ""
    comment: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class NoticeEvent:
    """A non-message happening (poke, recall, member change, bot online/offline)."""

    adapter: str
    kind: str
    user_id: str = ""
    group_id: str = ""
    target_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


Event = MessageEvent | RequestEvent | NoticeEvent
