"""`disable`: take a key out of service: out of every pool, and deactivated at the provider where that is
reversible (Anthropic inactive, OpenRouter disabled, AWS Inactive)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from keywatch.domain import AdminState
from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig, ActionRequest, CapabilityCheck
from keywatch.engine.model import ActionContext, KeyView, Outcome
from keywatch.providers.base import Capability


class DisableAction(ActionConfig):
    type: Literal["disable"] = "disable"
    at_provider: bool = Field(
        True,
        description="Also deactivate the key at the provider where that is reversible (Anthropic inactive, "
        "OpenRouter disabled, AWS Inactive)",
    )


def provider_side_written(config: Any) -> bool:
    """A provider-side change is only relied on when `at_provider = true` is written: the default means
    "at the provider where that is reversible", which degrades to pools-only by design."""
    return "at_provider" in config.model_fields_set and bool(config.at_provider)


def no_reversible(where: str, lacking: Sequence[str], verb: str, effect: str) -> CapabilityCheck:
    has = "has" if len(lacking) == 1 else "have"
    return CapabilityCheck(
        warnings=[
            f"{where}: {', '.join(lacking)} {has} no reversible {verb}: the key {effect} "
            "(at_provider = false says so and silences this)"
        ]
    )


@register
class Disable(Action):
    type = "disable"
    config = DisableAction
    capability = Capability.DISABLE
    counted = True
    removes_key = True
    admin = True

    @classmethod
    def needed(cls, config: DisableAction, view: KeyView) -> bool:
        return view.state.admin_state not in (AdminState.DISABLED, AdminState.RETIRED)

    @classmethod
    def needs_capability(cls, config: DisableAction) -> bool:
        return provider_side_written(config)

    @classmethod
    def check_capability(cls, config: DisableAction, where: str, lacking: Sequence[str]) -> CapabilityCheck:
        return no_reversible(where, lacking, "deactivate", "leaves pools only")

    @classmethod
    def describe(cls, config: DisableAction) -> str:
        return "disabled at the provider" if config.at_provider else "disabled in keywatch"

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        async def body() -> Outcome:
            changed, words = await ex.provider_call(req.key, Capability.DISABLE, "disable",
                                                    at_provider=req.config.at_provider)
            new = replace(req.state, admin_state=AdminState.DISABLED)
            await ex.set_admin(new, req.actor, req.reason)
            if changed is False:
                out = Outcome(
                    "partial", f"disabled in keywatch (out of every pool); provider side NOT changed: {words}",
                    False, new,
                )
                await ex.alert_failure(req.key, "disable", req.actor, out.message)
                return out
            if changed is None:
                return Outcome(
                    "ok", f"disabled in keywatch (out of every pool); provider side not changed: {words}", None, new
                )
            return Outcome("ok", f"disabled in keywatch and {words}", True, new)

        return await ex.framed("disable", req.key.name, req, body=body)
