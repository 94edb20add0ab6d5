"""The console's pages: every module here has `ORDER` (its place in the navigation) and `setup(console)`."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from web.console.app import Console


def pages() -> list[Callable[[Console], None]]:
    """Each page module's `setup`, in navigation order."""
    found: list[tuple[int, str, Callable[[Console], None]]] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append((module.ORDER, info.name, module.setup))
    return [setup for _, _, setup in sorted(found, key=lambda item: item[:2])]
