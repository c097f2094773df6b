"""The rotation config: the `[rotation]` section and the rotation fields of a `[[keys]]` entry.

Imports only the ground floor (settings.types), like every capability's config module: settings.schema
assembles it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from keywatch.durations import parse_duration
from keywatch.settings.types import Duration, Strict


class KeyRotationFields(Strict):
    """The rotation fields of one key (mixed into the key's model)."""

    rotate_every: Duration | None = Field(None, description="Rotate the key when it is older than this")
    publish: list[str] = Field(
        default_factory=list,
        description="Destinations the applications read the key from: aws-sm:, azure-kv:, file:, envfile: references",
    )
    grace: Duration | None = Field(
        None, description="Time the old key keeps working after promote (default rotation.grace)"
    )
    revoke_when: Literal["grace", "unused"] | None = Field(
        None, description="grace: retire the old key after `grace`; unused: once the provider's last-used time "
        "of the old key is older than the promotion (up to rotation_max_unused_wait)"
    )
    rotation_max_unused_wait: Duration | None = Field(
        None,
        description="revoke_when = unused: retire the old key after this at the latest "
        "(default rotation.max_unused_wait)",
    )
    promote_command: list[str] | None = Field(
        None, min_length=1,
        description="Command (argv, no shell) run when a rotation promotes the new key; its environment "
        "holds KEYWATCH_KEY, KEYWATCH_ROTATION, KEYWATCH_FINGERPRINT..., never the secret",
    )
    promote_webhook: str | None = Field(
        None, description="URL, or a secret reference to one (env:NAME), POSTed a `key.rotated` event (signed "
        "with rotation.webhook_secret) at promote",
    )
    watch_source: bool | None = Field(
        None, description="Assisted rotation: watch the key's own secret reference for a new value "
        "(default rotation.watch_sources)",
    )


class RotationPolicy(Strict):
    """A rotation schedule for every key whose labels match `labels`."""

    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict, description="Selector: every label must match")
    rotate_every: Duration = Field(description="Rotate matching keys older than this")


class RotationSettings(Strict):
    enabled: bool = Field(True, description="Run the rotation timer and resume rotations in flight at start")
    check_interval: Duration = Field("1m", description="Time between checks for due rotations")
    max_in_flight: int = Field(5, ge=1, description="Rotations in flight at once, fleet-wide")
    verify_timeout: Duration = Field("5m", description="How long a new key may take to work (propagation)")
    verify_interval: Duration = Field("2s", description="Time between probes of a new key")
    grace: Duration = Field("1h", description="Default time the old key keeps working after promote")
    max_unused_wait: Duration = Field("1d", description="Default upper bound of revoke_when = unused")
    allow_destructive: bool = Field(
        False, description="Delete the old credential after grace (else only deactivate it where reversible)"
    )
    policies: list[RotationPolicy] = Field(default_factory=list, description="rotate_every by label selector")
    consumer_timeout: Duration = Field("30s", description="How long a promote_command or promote_webhook may take")
    webhook_secret: str | None = Field(
        None, description="Secret reference (env:, file:...) signing promote webhooks the Standard Webhooks "
        "way (whsec_...)",
    )
    watch_sources: bool = Field(
        True, description="Assisted rotation: once due, re-read the key's secret source every check_interval "
        "and rotate to a new value found there",
    )


def seconds(value: Any) -> float | None:
    """A duration as a key's options hold it (the config's text form, e.g. "90d") in seconds."""
    if value is None:
        return None
    return parse_duration(value) if isinstance(value, str) else float(value)


def rotate_every(key: Any, settings: RotationSettings) -> float | None:
    """The key's own rotate_every, else the first matching policy's, in seconds."""
    own = seconds(key.options.get("rotate_every"))
    if own is not None:
        return own
    for p in settings.policies:
        if all(key.labels.get(k) == v for k, v in p.labels.items()):
            return float(p.rotate_every)
    return None
