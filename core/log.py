"""loguru set-up, done once at start: console always, a rotated file when `[log] file` is set."""

from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

CONSOLE_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[adapter]}</cyan> {message}"
)
FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[adapter]} {name}:{line} {message}"


def setup_logging(level: str = "INFO", file: str = "", rotation: str = "10 MB", retention: int = 7) -> None:
    """Route all logs to stderr (and to a rotated file when `file` is set)."""
    logger.remove()
    logger.configure(extra={"adapter": "-"})
    logger.add(sys.stderr, level=level, format=CONSOLE_FORMAT, backtrace=False, diagnose=False)
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            file,
            level=level,
            format=FILE_FORMAT,
            rotation=rotation,
            retention=retention,
            encoding="utf-8",
            enqueue=True,
            backtrace=False,
            diagnose=False,
        )
