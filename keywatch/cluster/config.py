"""The `[cluster]` section. It uses keywatch.settings.types only: the settings schema imports this module."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from keywatch.settings.types import Duration, Strict

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class ClusterSettings(Strict):
    instance: str | None = Field(
        None,
        pattern=_NAME_PATTERN,
        description="This instance's name among the instances sharing one PostgreSQL database (default: the "
        "host name; set it when several instances run on one host)",
    )
    heartbeat: Duration = Field("2s", description="Time between two heartbeats (and leadership checks)")
    takeover_timeout: Duration = Field(
        "10s",
        description="A member whose heartbeat is older than this is gone: its keys go to the others, and a "
        "leader that stopped beating is deposed (its database session ended) and replaced",
    )
    metrics: Literal["fleet", "share"] = Field(
        "fleet",
        description="What /metrics shows per key: fleet (every key, from the shared state; one scrape target "
        "shows it all) or share (only the keys this instance probes, for federated setups)",
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterSettings:
        if self.heartbeat < 0.1:
            raise ValueError("heartbeat: must be at least 100ms")
        if self.takeover_timeout < 2 * self.heartbeat:
            raise ValueError("takeover_timeout: must be at least twice the heartbeat")
        return self
