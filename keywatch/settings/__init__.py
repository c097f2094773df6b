"""Configuration: schema, loading, secret references."""

import importlib
from typing import Any

__all__ = ["ConfigError", "Inventory", "load", "load_inventory"]


def __getattr__(name: str) -> Any:
    # Lazy, so that providers.base can use settings.secrets without importing the loader (which needs it).
    if name in __all__:
        return getattr(importlib.import_module("keywatch.settings.loader"), name)
    raise AttributeError(name)
