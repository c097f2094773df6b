"""The `[[policies]]`, `[outage]` and `[safety]` sections.

Conditions and actions are registered by name and each validates its own argument, so a bad policy is
refused at load with the list of valid names (cloud-custodian style), before anything can act on a key.

It uses keywatch.settings.types only: the settings schema imports this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from keywatch.domain import AdminState, Health, Signal
from keywatch.engine.actions.base import ActionConfig
from keywatch.settings.types import NAME_PATTERN, Duration, Strict, known_providers, one_or_many

# Signals other parts of keywatch raise about a key (runtime.SignalBoard); "compromised" is also raised
# by KeyState.compromised.
SIGNALS: tuple[str, ...] = tuple(str(s) for s in Signal)
HEALTH_NAMES: tuple[str, ...] = tuple(str(h) for h in Health)
ADMIN_NAMES: tuple[str, ...] = tuple(str(a) for a in AdminState)


def _names_in(valid: tuple[str, ...], what: str) -> Any:
    def check(values: list[str]) -> list[str]:
        bad = [x for x in values if x not in valid]
        if bad:
            raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
        return values

    return check


# -- conditions ----------------------------------------------------------------------------------------
class Conditions(Strict):
    """`when = { ... }`: every condition written must hold; a key matches when all do."""

    health: Annotated[list[str], AfterValidator(_names_in(HEALTH_NAMES, "health"))] | None = Field(
        None, description="The key's current health is one of these"
    )
    changed_to: Annotated[list[str], AfterValidator(_names_in(HEALTH_NAMES, "health"))] | None = Field(
        None, description="The key's health changed into one of these in this cycle"
    )
    changed_from: Annotated[list[str], AfterValidator(_names_in(HEALTH_NAMES, "health"))] | None = Field(
        None, description="The key's health changed away from one of these in this cycle"
    )
    for_probes: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="The current health has held for at least this many consecutive probes (probes during a "
        "provider outage do not count)",
    )
    for_duration: Duration | None = Field(
        None,
        description="The current health has held for at least this long (time in an outage does not count)",
    )
    provider: Annotated[list[str], AfterValidator(lambda v: known_providers(v))] | None = Field(
        None, description="The key's provider is one of these"
    )
    labels: dict[str, str] | None = Field(None, description="Every label given equals the key's label")
    keys: list[str] | None = Field(None, description="The key's name matches one of these glob patterns")
    signals: Annotated[list[str], AfterValidator(_names_in(SIGNALS, "signal"))] | None = Field(
        None, description="The key carries at least one of these signals: " + ", ".join(SIGNALS)
    )
    compromised: bool | None = Field(None, description="The provider reports the key as exposed (or not)")
    admin_state: Annotated[list[str], AfterValidator(_names_in(ADMIN_NAMES, "admin state"))] | None = Field(
        None, description="The key's admin state is one of these"
    )
    disabled_by: Literal["keywatch", "operator", "any"] | None = Field(
        None, description="The key is disabled, by a policy (keywatch), by a person (operator), or by either"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError('expected a table of conditions, e.g. { health = "invalid", for_probes = 3 }')
        unknown = [k for k in data if k not in cls.model_fields]
        if unknown:
            raise ValueError(
                f"unknown condition {', '.join(map(repr, unknown))}; "
                f"valid conditions: {', '.join(cls.model_fields)}"
            )
        if not data:
            raise ValueError(
                "at least one condition is required (a policy that matches every key is refused)"
            )
        for name in ("health", "changed_to", "changed_from", "provider", "keys", "signals", "admin_state"):
            if name in data:
                data = {**data, name: one_or_many(data[name])}
        return data


# -- actions: each one's model lives in its module under engine/actions/, found through the registry ---------
def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON Schema with its $defs resolved in place, so it can sit inside another schema."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(dict(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _actions_schema(schema: dict[str, Any]) -> None:
    from keywatch.engine import actions

    schema["items"] = {
        "oneOf": [{"type": "string", "enum": actions.names()}]
        + [_inline(a.config.model_json_schema()) for a in actions.all_actions().values()]
    }


class PolicyConfig(Strict):
    name: str = Field(
        pattern=NAME_PATTERN, description="Unique; the actor recorded on every action it takes"
    )
    description: str | None = None
    enabled: bool = True
    dry_run: bool = Field(False, description="Decide and record, do nothing (also [safety] dry_run)")
    when: Conditions
    actions: Annotated[list[SerializeAsAny[ActionConfig]], Field(min_length=1)] = Field(
        description="What to do while the conditions hold: alert, disable, enable, pool_remove, pool_add, "
        "hook, revoke; a name or a table with `type`",
        json_schema_extra=_actions_schema,
    )
    max_actions_per_hour: int | None = Field(
        None,
        ge=1,
        description="Blast radius of this policy; default [safety] max_actions_per_policy_per_hour",
    )

    @field_validator("actions", mode="before")
    @classmethod
    def _actions(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("expected a list of actions")
        from keywatch.engine import actions

        out, problems = [], []
        for i, item in enumerate(v):
            try:
                out.append(actions.parse(item))
            except ValueError as exc:
                problems.append(f"[{i}] {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return out

    @property
    def action_list(self) -> list[ActionConfig]:
        return list(self.actions)


# -- outage and safety ----------------------------------------------------------------------------------
class OutageSettings(Strict):
    enabled: bool = Field(
        True, description="Detect provider outages and suspend key-level actions during them"
    )
    threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Fraction of one provider's (or one base_url's) keys failing with "
        "provider_error or unreachable in a cycle that makes an outage",
    )
    min_keys: int = Field(
        3, ge=1, description="An outage needs at least this many of the group's keys failing (and the "
        "threshold); with fewer, each key's own hysteresis decides"
    )


class SafetySettings(Strict):
    dry_run: bool = Field(False, description="Every policy decides and records but does nothing")
    max_actions_per_policy_per_hour: int = Field(
        20, ge=1, description="Past this, a policy stops acting and a critical blast_radius alert fires"
    )
    max_disabled_percent: float = Field(
        10.0,
        gt=0,
        le=100,
        description="keywatch never lets its own disables exceed this share of the fleet; a cycle that "
        "would is "
        "refused as a whole and a critical blast_radius alert fires",
    )
    default_policies: Literal["when_empty", "always", "never"] = Field(
        "when_empty", description="The built-in policies: when no [[policies]] is written, always, or never"
    )
    disable_after_probes: int = Field(
        3, ge=1, description="Built-in: invalid this many probes in a row -> disable"
    )
    auto_enable: bool = Field(
        True, description="Built-in: re-enable a key keywatch disabled once it recovers"
    )
    enable_after_probes: int = Field(
        3, ge=1, description="Built-in: healthy this many probes in a row -> enable"
    )
    rate_limited_warn_after: Duration = Field(
        "30m", description="Built-in: rate_limited this long -> warning"
    )
    alert_clear_probes: int = Field(
        3,
        ge=1,
        description="A policy alert resolves after its condition stayed false this many cycles (a flapping "
        "key keeps one alert firing instead of one per flap)",
    )


# -- cross references (run with the Config's earlier fields in `info.data`) -----------------------------
def policy_problems(policies: list[PolicyConfig], info: ValidationInfo) -> list[str]:
    """Duplicate names and unknown pools; the settings schema adds the provider capability check."""
    problems = []
    pool_names = {p.name for p in (info.data.get("pools") or [])}
    seen: dict[str, int] = {}
    for i, p in enumerate(policies):
        if p.name in seen:
            problems.append(f"[{i}].name: {p.name!r} is already used by policies[{seen[p.name]}]")
        seen.setdefault(p.name, i)
        for j, a in enumerate(p.action_list):
            for name in getattr(a, "pools", None) or []:
                if name not in pool_names:
                    known = ", ".join(sorted(pool_names)) or "none"
                    problems.append(
                        f"[{i}] ({p.name}) actions[{j}].pools: no pool named {name!r} (known: {known})"
                    )
    return problems
