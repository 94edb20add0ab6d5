"""current_time: the date, weekday and time in the configured time zone (models do not know what day it is)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tools.base import ToolError, ToolSpec

# A clock returns the current moment as an aware datetime; tests inject a fixed one.
Clock = Callable[[], datetime]

WEEKDAYS_ZH = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")
WEEKDAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_offset(moment: datetime) -> str:
    """`UTC+08:00`, `UTC-03:30` or `UTC+00:00` for an aware datetime."""
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


def describe(moment: datetime, zone_name: str) -> str:
    """The text the model reads: date, weekday in Chinese and English, time, zone and UTC offset, ISO 8601."""
    weekday = moment.weekday()
    return (
        f"现在是 {moment:%Y年%m月%d日} {WEEKDAYS_ZH[weekday]} {moment:%H:%M:%S}"
        f"（时区 {zone_name}，{utc_offset(moment)}）\n"
        f"Now: {WEEKDAYS_EN[weekday]}, {moment:%Y-%m-%d %H:%M:%S} ({zone_name}, {utc_offset(moment)})\n"
        f"ISO 8601: {moment.isoformat(timespec='seconds')}"
    )


class CurrentTime:
    """The `current_time` tool: takes no arguments."""

    def __init__(self, timezone: str, clock: Clock = utc_now) -> None:
        try:
            self._zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"未知时区 {timezone!r}") from None
        self._zone_name = timezone
        self._clock = clock
        self._spec = ToolSpec(
            name="current_time",
            description=(
                "获取当前的日期、星期和时间（机器人所在时区）。回答与“今天”“现在”“几号”“星期几”有关的问题前先调用。"
                " / Get the current date, weekday and time in the bot's time zone; call it before answering "
                "anything that depends on today's date or the current time."
            ),
            parameters={"type": "object", "properties": {}, "additionalProperties": False},
            progress="",
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        moment = self._clock()
        if moment.tzinfo is None:  # a naive clock is taken to be UTC
            moment = moment.replace(tzinfo=UTC)
        return describe(moment.astimezone(self._zone), self._zone_name)
