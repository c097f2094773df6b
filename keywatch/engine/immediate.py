"""What one capability may ask of another between two cycles, without waiting for the next one:

- publish the pools now (a key just contained must leave them at once): the policy engine attaches itself
  at setup, as the rotation capability does for `rotate` (engine.actions.rotate.attach);
- contain keys found exposed now (a scheduled scan's findings go the receivers' way): the leak capability
  attaches its intake at setup.

Nothing imports another capability's instance: each side attaches or asks here, and an ask with nothing
attached says so, so the caller falls back to the next cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Publisher = Callable[[], Awaitable[None]]
Exposer = Callable[[list[Any]], Awaitable[None]]
_publisher: Publisher | None = None
_exposer: Exposer | None = None


def attach(publisher: Publisher | None) -> None:
    global _publisher
    _publisher = publisher


async def publish_pools() -> bool:
    """False when no policy engine runs in this process (the next cycle publishes)."""
    if _publisher is None:
        return False
    await _publisher()
    return True


def attach_exposure(exposer: Exposer | None) -> None:
    global _exposer
    _exposer = exposer


def exposure_attached() -> bool:
    return _exposer is not None


async def report_exposed(found: list[Any]) -> bool:
    """Hand leak reports (`keywatch.leaks.intake.Incoming`) to the leak capability, which records each
    durably and contains the managed keys among them at once. False when no leak capability runs in this
    process (the caller raises its signal for the next cycle instead)."""
    if _exposer is None:
        return False
    await _exposer(found)
    return True
