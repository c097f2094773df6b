"""The `[usage]` and `[[budgets]]` sections.

It uses keywatch.settings.types only: the settings schema imports this module.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from keywatch.settings.types import Duration, Strict

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
DEFAULT_THRESHOLDS = (50, 80, 95, 100)
PERIODS = ("daily", "weekly", "monthly")



class UsageSettings(Strict):
    enabled: bool = Field(True, description="Pull usage and cost figures from the accounts' admin APIs")
    interval: Duration = Field("1h", description="Time between usage pulls")
    lookback: Duration = Field(
        "2d",
        description="Window re-pulled every time (providers revise recent figures; a re-pull replaces, never adds)",
    )
    initial_lookback: Duration = Field(
        "31d", description="Window of the first pull after start, so monthly budgets see the whole month"
    )
    burn_window: Duration = Field("24h", description="Trailing window whose spend rate drives the forecasts")
    accounts: list[str] | None = Field(
        None, description="Only these [[accounts]] (default: every account whose provider reports usage)"
    )
    timeout: Duration = Field("30s", description="Time one usage request may take")
    anomaly_threshold: float = Field(
        6.0,
        ge=0,
        le=1000,
        description="Robust score (distance from the median of the same hour on the key's past days, in MADs) "
        "above which an hour's requests, tokens or spend is a usage anomaly; lower flags more, 0 turns it off",
    )

    @model_validator(mode="after")
    def _check(self) -> UsageSettings:
        if self.interval < 60:
            raise ValueError("interval: must be at least 1m (the providers' finest usage bucket is an hour)")
        if self.lookback < 3600:
            raise ValueError("lookback: must be at least 1h")
        if self.initial_lookback < self.lookback:
            raise ValueError("initial_lookback: must not be shorter than lookback")
        if self.burn_window < 3600:
            raise ValueError("burn_window: must be at least 1h")
        return self


def _positive(v: Decimal | None) -> Decimal | None:
    if v is not None and (not v.is_finite() or v <= 0):
        raise ValueError("must be a positive amount")
    return v


def _thresholds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("needs at least one threshold")
    if any(not 1 <= t <= 1000 for t in v):
        raise ValueError("each threshold is a percentage between 1 and 1000")
    if len(set(v)) != len(v):
        raise ValueError("thresholds must be distinct")
    return sorted(v)


class BudgetConfig(Strict):
    name: str = Field(pattern=_NAME_PATTERN, description="Unique; used in alerts (budget:<name>) and metrics")
    key: str | None = Field(None, description="The budget covers this key (a [[keys]] name)")
    labels: dict[str, str] | None = Field(
        None, description="The budget covers every key carrying all these labels, e.g. { team = \"search\" }"
    )
    account: str | None = Field(None, description="The budget covers everything this [[accounts]] entry spends")
    provider: str | None = Field(
        None, description="The budget covers everything spent at this provider (alone, or narrowing labels)"
    )
    scope: str | None = Field(
        None,
        description="The budget covers one provider scope where costs are reported above keys: "
        "project:<id> (OpenAI), workspace:<id> (Anthropic)",
    )
    period: Literal["daily", "weekly", "monthly"] = Field(
        "monthly", description="UTC calendar period; weeks start on Monday"
    )
    usd: Annotated[Decimal | None, AfterValidator(_positive)] = Field(None, description="Limit in US dollars")
    tokens: int | None = Field(None, gt=0, description="Limit in tokens (input + output)")
    thresholds: Annotated[list[int], AfterValidator(_thresholds)] = Field(
        default_factory=lambda: list(DEFAULT_THRESHOLDS),
        description="Percentages announced once per period each; 100 raises budget_exhausted on the keys",
    )
    forecast: bool = Field(True, description="Warn when the trailing burn rate runs the budget out before period end")

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        if self.usd is None and self.tokens is None:
            raise ValueError("set usd, tokens or both")
        selectors = [f for f in ("key", "labels", "account", "scope") if getattr(self, f)]
        if len(selectors) > 1:
            raise ValueError(f"choose one of key, labels, account, scope (got {', '.join(selectors)})")
        if not selectors and not self.provider:
            raise ValueError("say what the budget covers: key, labels, account, scope or provider")
        if self.scope is not None and (":" not in self.scope or self.scope.startswith("key:")):
            raise ValueError("scope: expected project:<id> or workspace:<id> (use key = ... for a key)")
        return self


Budgets = list[BudgetConfig]


def check_references(budgets: list[BudgetConfig], key_names: set[str], account_names: set[str]) -> list[str]:
    """Problems with budgets that name keys or accounts the config does not have, each naming its place."""
    problems = []
    seen: dict[str, int] = {}
    for i, b in enumerate(budgets):
        if b.name in seen:
            problems.append(f"budgets[{i}].name: {b.name!r} is already used by budgets[{seen[b.name]}]")
        seen.setdefault(b.name, i)
        if b.key is not None and b.key not in key_names:
            problems.append(f"budgets[{i}].key: no key named {b.key!r}")
        if b.account is not None and b.account not in account_names:
            problems.append(f"budgets[{i}].account: no account named {b.account!r}")
    return problems
