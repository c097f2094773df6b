"""An action that ships with no keywatch release: it exists only for the test that shows an action module
is all it takes (validation, the plan, `policy test` and the executor find it through the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action
from keywatch.engine.model import ActionConfig, ActionContext, ActionRequest, KeyView, Outcome


class MarkAction(ActionConfig):
    type: Literal["mark"] = "mark"
    path: str = Field(description="File that gets one line per marked key")
    note: str = Field("marked", description="What the line says")


@register
class Mark(Action):
    type = "mark"
    config = MarkAction
    counted = True

    @classmethod
    def needed(cls, config: MarkAction, view: KeyView) -> bool:
        p = Path(config.path)
        return not (p.exists() and f"{view.key} " in p.read_text())

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        async def body() -> Outcome:
            with open(req.config.path, "a") as f:
                f.write(f"{req.key.name} {req.config.note}\n")
            return Outcome("ok", f"marked {req.key.name}")

        return await ex.framed("mark", req.key.name, req, body=body, provider_action=False)
