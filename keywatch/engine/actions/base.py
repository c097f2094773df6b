"""What every policy action is: its config model, what it needs from the provider, how it counts against
the safety catches, when it is needed, what it adds to the cycle plan, and how it runs.

cloud-custodian's actions are the model: each carries its schema, its permissions, `validate()` and
`process()`; the registry (actions/__init__.py) is the only list of them. An action that acts through the
executor overrides `execute`; one that only shapes the plan (alert, pool membership) overrides `plan`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from keywatch.engine.model import ActionConfig, ActionContext, ActionRequest, Decision, KeyView, Outcome, PlanBuilder
from keywatch.providers.base import Capability

__all__ = ["Action", "ActionConfig", "ActionRequest", "CapabilityCheck"]


@dataclass(frozen=True)
class CapabilityCheck:
    """Problems found for one policy action against the providers it can select."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Action:
    type: ClassVar[str]
    config: ClassVar[type[ActionConfig]]
    # The provider capability the action uses (None: it acts in keywatch alone).
    capability: ClassVar[Capability | None] = None
    # Counts toward the per-policy hourly blast radius (changes something outside keywatch's bookkeeping).
    counted: ClassVar[bool] = False
    # Takes a key out of service: the fleet-share limit (safety.max_disabled_percent) applies.
    removes_key: ClassVar[bool] = False
    # Puts a key back into service: never for a compromised key (only a person does that).
    restores_key: ClassVar[bool] = False
    # Changes the key's admin state: a person's decision holds it back.
    admin: ClassVar[bool] = False
    # Runs once when its policy starts matching a key, not every cycle it matches (a hook).
    once_per_match: ClassVar[bool] = False
    # Tells a person about the key (a policy without any such action leaves a dying key silent).
    raises_alert: ClassVar[bool] = False

    @classmethod
    def needed(cls, config: Any, view: KeyView) -> bool:
        """False when what the action would do is already done (idempotence)."""
        return True

    @classmethod
    def plan(cls, decision: Decision, view: KeyView, builder: PlanBuilder) -> None:
        """Add the decision to the cycle plan. By default it is an action the executor runs."""
        builder.act(decision, view)

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        raise NotImplementedError(f"action {cls.type} is not run by the executor")

    @classmethod
    def needs_capability(cls, config: Any) -> bool:
        """Whether this configured instance relies on `capability` (disable may leave the provider alone)."""
        return cls.capability is not None

    @classmethod
    def check_capability(cls, config: Any, where: str, lacking: Sequence[str]) -> CapabilityCheck:
        """What to say when providers the policy selects lack `capability`: an error refuses the config."""
        assert cls.capability is not None
        return CapabilityCheck(errors=[f"{where}: {', '.join(lacking)} cannot {cls.capability.value} a key"])

    @classmethod
    def describe(cls, config: Any) -> str:
        """A few words for alerts and `policy test`: what the action does."""
        return cls.type
