"""One module per provider, found automatically: each defines `PREFIX` and `register(app, state)`.

Adding a provider is adding a file here; nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def route_modules() -> list[ModuleType]:
    """Every provider module in this package, in name order, so mount order is stable."""
    modules = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        prefix = getattr(module, "PREFIX", None)
        if not callable(getattr(module, "register", None)) or not isinstance(prefix, str):
            raise TypeError(f"{module.__name__} must define PREFIX: str and register(app, state)")
        modules.append(module)
    return modules
