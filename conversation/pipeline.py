"""The message pipeline: a list of plain `(event, ctx, next)` steps, each deciding whether the message goes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from adapters.base import Adapter
from conversation.commands import Command
from core.event import MessageEvent
from storage.admin import RateCheck

# What a step calls to hand the message on; not calling it drops the message there.
Next = Callable[[MessageEvent, "Context"], Awaitable[None]]
# One step: it reads and fills `ctx`, and calls `next` (or not).
Step = Callable[[MessageEvent, "Context", Next], Awaitable[None]]


@dataclass(slots=True)
class Context:
    """What the steps learnt about one message, passed explicitly from step to step."""

    adapter: Adapter | None
    prompt: str = ""  # the text meant for the bot, once the trigger step found it
    admin: bool = False  # the sender is one of the adapter's managers
    command: Command | None = None
    session_key: str = ""
    rate: RateCheck | None = None  # the rate limit check, when a limit applies
    spoken: bool = False  # the message was a voice, and `prompt` what it said
    handed_off: bool = False  # work that will answer the message was started (it says when it is done)


async def run(steps: Sequence[Step], event: MessageEvent, ctx: Context) -> None:
    """Run `event` through `steps` in order; a step that does not call `next` ends the run."""

    async def call(index: int, event: MessageEvent, ctx: Context) -> None:
        if index < len(steps):
            await steps[index](event, ctx, lambda e, c: call(index + 1, e, c))

    await call(0, event, ctx)
