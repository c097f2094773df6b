"""`enable`: put a key keywatch (or a person) disabled back into service; at the provider first, so a key
still inactive there never returns to the pools."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from pydantic import Field

from keywatch.domain import AdminState
from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig, ActionRequest, CapabilityCheck
from keywatch.engine.actions.disable import no_reversible, provider_side_written
from keywatch.engine.model import ActionContext, KeyView, Outcome
from keywatch.providers.base import Capability


class EnableAction(ActionConfig):
    type: Literal["enable"] = "enable"
    at_provider: bool = Field(True, description="Also re-activate the key at the provider where possible")


@register
class Enable(Action):
    type = "enable"
    config = EnableAction
    capability = Capability.ENABLE
    counted = True
    admin = True
    restores_key = True

    @classmethod
    def needed(cls, config: EnableAction, view: KeyView) -> bool:
        """Never for a compromised key: only a person brings one back (`keywatch enable --compromised-ok`)."""
        return view.state.admin_state is AdminState.DISABLED and "compromised" not in view.all_signals

    @classmethod
    def needs_capability(cls, config: EnableAction) -> bool:
        return provider_side_written(config)

    @classmethod
    def check_capability(cls, config: EnableAction, where: str, lacking: Sequence[str]) -> CapabilityCheck:
        return no_reversible(where, lacking, "re-activate", "returns to pools only")

    @classmethod
    def describe(cls, config: EnableAction) -> str:
        return "re-enabled"

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        async def body() -> Outcome:
            changed, words = await ex.provider_call(req.key, Capability.ENABLE, "enable",
                                                    at_provider=req.config.at_provider)
            if changed is False:
                out = Outcome("failed", f"stays disabled: re-activation at the provider failed: {words}", False)
                await ex.alert_failure(req.key, "enable", req.actor, out.message)
                return out
            new = replace(req.state, admin_state=AdminState.ACTIVE)
            await ex.set_admin(new, req.actor, req.reason)
            return Outcome("ok", "enabled in keywatch" + (f" and {words}" if changed else ""), changed, new)

        return await ex.framed("enable", req.key.name, req, body=body)
