"""What another capability may ask of the policy engine between two cycles: publish the pools now (a key
just contained must leave them at once, not at the next cycle). The engine attaches itself at setup, as
the rotation capability does for `rotate` (engine.actions.rotate.attach), so nothing imports the engine's
instance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Publisher = Callable[[], Awaitable[None]]
_publisher: Publisher | None = None


def attach(publisher: Publisher | None) -> None:
    global _publisher
    _publisher = publisher


async def publish_pools() -> bool:
    """False when no policy engine runs in this process (the next cycle publishes)."""
    if _publisher is None:
        return False
    await _publisher()
    return True
