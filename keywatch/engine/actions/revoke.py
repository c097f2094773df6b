"""`revoke`: delete the key at the provider (OpenAI delete, Anthropic archive, Azure regenerate). It cannot
be undone, so both the action and the account must opt in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from keywatch.domain import AdminState
from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig, ActionRequest, CapabilityCheck
from keywatch.engine.model import ActionContext, KeyView, Outcome
from keywatch.providers import registry
from keywatch.providers.base import Capability


class RevokeAction(ActionConfig):
    type: Literal["revoke"] = "revoke"
    allow_destructive: bool = Field(
        False,
        description="Must be true: revoking (OpenAI delete, Anthropic archive, Azure regenerate) cannot "
        "be undone; the account must also set allow_destructive",
    )

    @model_validator(mode="after")
    def _opt_in(self) -> RevokeAction:
        if not self.allow_destructive:
            raise ValueError("revoke cannot be undone; set allow_destructive = true on this action to allow it")
        return self


def _caps(provider: str) -> frozenset[Capability]:
    return registry.capabilities(provider)


def _can(provider: str) -> str:
    caps = _caps(provider)
    return ", ".join(c.value for c in Capability if c in caps) or "nothing"


def _instead(providers: Sequence[str]) -> str:
    can_disable = [p for p in providers if Capability.DISABLE in _caps(p)]
    cannot = [p for p in providers if p not in can_disable]
    pools_only = "disable with at_provider = false (the key leaves every pool)"
    parts = []
    if can_disable:
        parts.append(f"{', '.join(can_disable)}: disable (deactivates the key at the provider, reversibly)")
    if cannot:
        parts.append(f"{', '.join(cannot)}: {pools_only}" if can_disable else pools_only)
    return "; ".join(parts) + ", with an alert so a person revokes the key in the provider's console"


@register
class Revoke(Action):
    type = "revoke"
    config = RevokeAction
    capability = Capability.REVOKE
    counted = True
    removes_key = True
    admin = True

    @classmethod
    def needed(cls, config: RevokeAction, view: KeyView) -> bool:
        return view.state.admin_state is not AdminState.RETIRED

    @classmethod
    def check_capability(cls, config: RevokeAction, where: str, lacking: Sequence[str]) -> CapabilityCheck:
        """An error: the policy's whole point would silently not happen."""
        can = "; ".join(f"{x} can: {_can(x)}" for x in lacking)
        able = [x for x in registry.names() if Capability.REVOKE in _caps(x)]
        return CapabilityCheck(errors=[
            f"{where}: {', '.join(lacking)} cannot revoke a key through its API ({can}); instead: "
            f"{_instead(lacking)}; or narrow `when` (provider, keys, labels) to providers that can revoke "
            f"({', '.join(able)})"
        ])

    @classmethod
    def describe(cls, config: RevokeAction) -> str:
        return "revoked at the provider"

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        """Retired in keywatch only once the provider confirms: a key that may still work there must not be
        marked retired."""

        async def body() -> Outcome:
            changed, words = await ex.provider_call(req.key, Capability.REVOKE, "revoke")
            if changed:
                new = replace(req.state, admin_state=AdminState.RETIRED)
                await ex.set_admin(new, req.actor, req.reason)
                return Outcome("ok", f"{words}; retired in keywatch", True, new)
            out = Outcome("failed", f"not revoked: {words}", changed)
            await ex.alert_failure(req.key, "revoke", req.actor, out.message)
            return out

        return await ex.framed("revoke", req.key.name, req, body=body)
