"""The policy actions. This registry is the only list of them: validation, `keywatch policy test`, the cycle
plan and the executor all look actions up here.

Adding an action is one module defining an `Action` subclass decorated with `@register` and one line in
`MODULES`. (A module outside the package, e.g. a test's, is picked up by importing it: `@register` is all
it takes.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from keywatch.engine.actions.base import Action

MODULES: tuple[str, ...] = ("alert", "disable", "enable", "pool_remove", "pool_add", "hook", "revoke", "rotate")

_REGISTRY: dict[str, type[Action]] = {}
_loaded = False
A = TypeVar("A", bound="type[Action]")


def register(cls: A) -> A:
    _REGISTRY[cls.type] = cls
    return cls


def unregister(kind: str) -> None:
    """Forget an action registered from outside the package (a plugin unloaded, a test's action)."""
    if kind in MODULES:
        raise ValueError(f"{kind} is a built-in action")
    _REGISTRY.pop(kind, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")  # each module registers its action


def all_actions() -> dict[str, type[Action]]:
    _load()
    return dict(_REGISTRY)


def names() -> list[str]:
    return list(all_actions())


def get(kind: str) -> type[Action]:
    actions = all_actions()
    try:
        return actions[kind]
    except KeyError:
        raise KeyError(f"unknown action {kind!r}; valid actions: {', '.join(actions)}") from None


def parse(item: Any) -> Any:
    """An action as written in a policy (a name or a table with `type`) -> its config model."""
    from pydantic import ValidationError

    if isinstance(item, str):
        item = {"type": item}
    if not isinstance(item, dict):
        raise ValueError('expected an action name or a table such as { type = "alert", severity = "critical" }')
    actions = all_actions()
    kind = item.get("type")
    if kind not in actions:
        raise ValueError(f"unknown action {kind!r}; valid actions: {', '.join(actions)}")
    model = actions[kind].config
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        parts = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field; valid fields of {kind}: {', '.join(model.model_fields)}"
            parts.append(f"{kind}{'.' + where if where else ''}: {msg}")
        raise ValueError("; ".join(parts)) from None
