"""`pool_remove`: hold a key out of pools while the policy matches (e.g. out of credit, budget spent)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig
from keywatch.engine.model import Decision, KeyView, PlanBuilder


class PoolRemoveAction(ActionConfig):
    type: Literal["pool_remove"] = "pool_remove"
    pools: list[str] | None = Field(None, description="Pools to leave while the policy matches; absent: every pool")


def announce_hold(decision: Decision, builder: PlanBuilder, verb: str) -> None:
    pools = ", ".join(decision.action.pools or ["every pool"])
    held = "dry run: would hold" if decision.dry_run else "held"
    builder.note(decision, f"{held} {decision.key} {verb} {pools} while: {decision.reason}")


@register
class PoolRemove(Action):
    type = "pool_remove"
    config = PoolRemoveAction

    @classmethod
    def plan(cls, decision: Decision, view: KeyView, builder: PlanBuilder) -> None:
        if not decision.dry_run:
            builder.hold_out(decision.key, decision.action.pools or ["*"])
        announce_hold(decision, builder, "out of")

    @classmethod
    def describe(cls, config: PoolRemoveAction) -> str:
        return "held out of " + (", ".join(config.pools) if config.pools else "every pool")
