"""`alert`: raise an alert while the policy matches; it resolves once the policy stops matching."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from keywatch.domain import Severity
from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig
from keywatch.engine.model import AlertWish, Decision, KeyView, PlanBuilder


class AlertAction(ActionConfig):
    type: Literal["alert"] = "alert"
    severity: Severity = Field(Severity.WARNING, description="info, warning or critical")
    identity: str = Field(
        "key_health:{key}", description="Dedup identity; {key}, {provider} and {policy} are replaced"
    )
    title: str | None = Field(None, description="Alert title; default: the policy name and the key")

    @field_validator("identity")
    @classmethod
    def _identity(cls, v: str) -> str:
        bad = set(re.findall(r"{([^}]*)}", v)) - {"key", "provider", "policy"}
        if bad:
            raise ValueError(
                f"unknown placeholder {', '.join(sorted(bad))}; valid: {{key}}, {{provider}}, {{policy}}"
            )
        return v


@register
class Alert(Action):
    type = "alert"
    config = AlertAction
    raises_alert = True

    @classmethod
    def describe(cls, config: AlertAction) -> str:
        return ""  # the alert itself says it

    @classmethod
    def plan(cls, decision: Decision, view: KeyView, builder: PlanBuilder) -> None:
        if decision.dry_run:
            builder.note(decision, f"dry run: would alert ({decision.action.severity}): {decision.reason}")
            return
        a = decision.action
        fmt = {"key": decision.key, "provider": decision.provider, "policy": decision.policy}
        title = a.title.format(**fmt) if a.title else f"{decision.key}: {decision.policy}"
        builder.alert(
            AlertWish(a.identity.format(**fmt), a.severity, decision.key, decision.provider, decision.policy,
                      title, decision.reason)
        )
