"""The `[scan]` section: paths the daemon scans for keys on a schedule (keywatch.leaks.scan_service).

It uses keywatch.settings.types only: the settings schema imports this module.
"""

from __future__ import annotations

from pathlib import PurePath

from pydantic import Field, field_validator, model_validator

from keywatch.settings.types import Duration, Strict


class ScanSettings(Strict):
    paths: list[str] = Field(
        default_factory=list,
        description="Absolute paths of files or directories scanned for keys on a schedule (none: no scheduled "
        "scan); a managed key found there is compromised, an unmanaged provider key raises a warning",
    )
    interval: Duration = Field("1h", description="Time between scheduled scans (at least 1m)")
    git_history: bool = Field(False, description="Also scan every blob in the git history of each path's repository")
    max_size: int = Field(
        50 << 20, ge=1024, description="Files and blobs larger than this many bytes are skipped (logged)"
    )

    @field_validator("paths")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        relative = [p for p in v if not PurePath(p).is_absolute()]
        if relative:
            raise ValueError(
                f"must be absolute (the daemon's working directory is not the config's): {', '.join(relative)}"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> ScanSettings:
        if self.interval < 60:
            raise ValueError("interval: must be at least 1m")
        return self
