"""Parts of the daemon that plug into its lifecycle (alerts, policies, pools, usage).

Each module listed here defines `async def setup(daemon) -> None`, which registers cycle hooks,
transition listeners, web routes or background tasks, and may define `async def teardown(daemon)`.
Adding a capability is adding a module and one line here.
"""

from __future__ import annotations

DAEMON_EXTENSIONS: list[str] = ["keywatch.notify.service", "keywatch.engine.service", "keywatch.usage.service"]
