"""The console's pages, in navigation order; each module's `setup(console)` adds its routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from web.console.pages import dashboard

if TYPE_CHECKING:
    from web.console.app import Console

PAGES: list[Callable[[Console], None]] = [dashboard.setup]
