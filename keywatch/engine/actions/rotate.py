"""`rotate`: start a rotation of the key (a compromised key, a key a policy wants replaced) through the
rotation capability (keywatch.rotation.service), which attaches itself here at start. The rotation runs
its own persisted steps; this action only starts it, once per match."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig, ActionRequest
from keywatch.engine.model import ActionContext, KeyView, Outcome

Starter = Callable[..., Awaitable[Any]]
_starter: Starter | None = None


def attach(starter: Starter | None) -> None:
    """The rotation capability registers how a rotation starts (None at shutdown)."""
    global _starter
    _starter = starter


def starter() -> Starter | None:
    """How a rotation starts in this process, if the rotation capability runs (containment asks it)."""
    return _starter


class RotateAction(ActionConfig):
    type: Literal["rotate"] = "rotate"


@register
class Rotate(Action):
    type = "rotate"
    config = RotateAction
    counted = True
    once_per_match = True

    @classmethod
    def needed(cls, config: RotateAction, view: KeyView) -> bool:
        return True

    @classmethod
    def describe(cls, config: RotateAction) -> str:
        return "rotation started (new key created, published, verified, promoted; the old one retired after grace)"

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        async def body() -> Outcome:
            if _starter is None:
                out = Outcome("failed", "rotation is not running in this process")
                await ex.alert_failure(req.key, "rotate", req.actor, out.message)
                return out
            started = await _starter(req.key.name, actor=req.actor, reason=req.reason)
            if started.ok:
                return Outcome("ok", started.message, False)
            out = Outcome("failed", started.message, False)
            await ex.alert_failure(req.key, "rotate", req.actor, out.message)
            return out

        return await ex.framed("rotate", req.key.name, req, body=body, would=f"would rotate {req.key.name}",
                               provider_action=False)
