"""The `[[pools]]` section: which healthy keys each pool publishes, and where.

It uses the ground floor and keywatch.settings.types only: the settings schema imports this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from keywatch.settings.types import NAME_PATTERN, Strict, known_providers, one_or_many


class RedisTarget(Strict):
    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://, rediss:// or unix:// URL, or a secret reference (env:NAME ...) when it "
        "holds a "
        "password",
    )
    key: str = Field(
        min_length=1,
        description="Redis set holding the pool's secrets (an app takes one with "
        "SRANDMEMBER); restrict it with Redis ACLs",
    )
    ranked: bool = Field(
        False, description="Also publish a sorted set `<key>:ranked`, best key first (ZRANGE 0 0)"
    )


class FileTarget(Strict):
    path: str = Field(
        min_length=1, description="File written atomically with mode 0600 (temp + fsync + rename)"
    )
    format: Literal["json", "env"] = Field(
        "json",
        description="json: {pool, updated_at, keys: [{name, provider, secret, base_url}]}; env: "
        "KEYWATCH_POOL_KEY (best), KEYWATCH_POOL_KEYS (comma-separated), KEYWATCH_POOL_SIZE",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("expected an absolute path")
        return v


class PoolConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    provider: Annotated[list[str], AfterValidator(lambda v: known_providers(v))] | None = Field(
        None, description="Only keys of these providers"
    )
    labels: dict[str, str] | None = Field(None, description="Only keys with every one of these labels")
    keys: list[str] | None = Field(
        None, description="Only keys whose name matches one of these glob patterns"
    )
    include_rate_limited: bool = Field(False, description="Keep rate_limited keys in the pool")
    order: Literal["latency", "headroom", "name"] = Field(
        "latency", description="latency: fastest first; headroom: most rate-limit room left first; name"
    )
    redis: RedisTarget | None = None
    file: FileTarget | None = None

    @field_validator("provider", "keys", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return one_or_many(v)

    @model_validator(mode="after")
    def _target(self) -> PoolConfig:
        if self.redis is None and self.file is None:
            raise ValueError('a pool needs a target: redis = { key = "..." } and/or file = { path = "..." }')
        return self


def check_pools(pools: list[PoolConfig]) -> list[PoolConfig]:
    seen: dict[str, int] = {}
    problems = []
    for i, p in enumerate(pools):
        if p.name in seen:
            problems.append(f"[{i}].name: {p.name!r} is already used by pools[{seen[p.name]}]")
        seen.setdefault(p.name, i)
    if problems:
        raise ValueError("; ".join(problems))
    return pools


Pools = Annotated[list[PoolConfig], AfterValidator(check_pools)]
