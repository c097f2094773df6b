"""`pool_add`: hold a key in pools while the policy matches, even where the pool's selector does not pick it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig
from keywatch.engine.actions.pool_remove import announce_hold
from keywatch.engine.model import Decision, KeyView, PlanBuilder


class PoolAddAction(ActionConfig):
    type: Literal["pool_add"] = "pool_add"
    pools: list[str] = Field(
        min_length=1,
        description="Pools to join while the policy matches, even if the pool's selector does not "
        "pick the key (it must still be healthy and active)",
    )


@register
class PoolAdd(Action):
    type = "pool_add"
    config = PoolAddAction

    @classmethod
    def plan(cls, decision: Decision, view: KeyView, builder: PlanBuilder) -> None:
        if not decision.dry_run:
            builder.hold_in(decision.key, decision.action.pools)
        announce_hold(decision, builder, "into")

    @classmethod
    def describe(cls, config: PoolAddAction) -> str:
        return "held in " + ", ".join(config.pools)
