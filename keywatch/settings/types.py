"""Field types every config section shares (durations, strict models, secret references).

Kept apart from schema.py so section modules (alerts, policies, usage) can use them while schema.py
imports those modules.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from keywatch.durations import DURATION_PATTERN, format_duration, parse_duration


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 5m or 1h30m")
    return parse_duration(value)


Duration = Annotated[
    Any,
    AfterValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "5m", "1h30m"]}),
]

SecretRef = Annotated[
    str,
    Field(
        min_length=1,
        description="A reference: env:NAME, file:/path, credential:NAME (systemd $CREDENTIALS_DIRECTORY); "
        "a literal secret only with daemon.allow_literal_secrets",
        json_schema_extra={"examples": ["env:OPENAI_PROD_KEY", "credential:openai-admin"]},
    ),
]


class Strict(BaseModel):
    """Unknown fields are errors that name the field, never silent defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


def one_or_many(v: Any) -> Any:
    """`provider = "openai"` and `provider = ["openai"]` mean the same."""
    return [v] if isinstance(v, str) else v


def known_providers(values: list[str]) -> list[str]:
    from keywatch.providers import registry

    bad = [v for v in values if v not in registry.PROVIDERS]
    if bad:
        raise ValueError(f"unknown provider {', '.join(map(repr, bad))}; valid: {', '.join(registry.names())}")
    return values
