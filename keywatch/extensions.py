"""The capabilities the daemon starts, in the order it starts them.

Each module defines `async def setup(runtime: keywatch.runtime.Runtime) -> Capability` (an object with
`async def aclose()`), which registers cycle hooks, transition listeners and background tasks on the
runtime. The daemon starts them in this order, runs their cycle hooks in this order after every probe
cycle, and closes them in the reverse order. The order matters:

1. alerts: attaches the durable alert pipeline to the runtime's alert bus, so every alert the others raise,
   from their first cycle on, reaches the sinks (before it, alerts go to the log).
2. policies: decides and acts on the cycle's states and the signals on the board (budget signals raised by
   usage in the previous cycle).
3. usage: pulls usage, evaluates budgets and raises or clears `budget_exhausted` for the next cycle.
4. leak_scan: scheduled scans of the `[scan]` paths (a job of its own, off without paths); a managed key
   found goes to the leak capability's containment at once (engine.immediate: the job first runs after
   every capability is up).
5. rotation: so the alerts it raises reach the pipeline and the `rotate` action it serves is
   registered; at start it resumes the rotations in flight (docs/rotation.md).
6. leaks: last, so the receivers it mounts on the HTTP server only take reports once containment can use
   everything it needs (the engine's pool publication, the rotation starter, the alert pipeline); its
   cycle hook runs after the policies', and containment never waits for a cycle anyway.

Adding a capability is adding a module and one line here.

`EVERY_INSTANCE` lists what runs on every instance of a cluster, leading or not, from start to shutdown:
each module defines `async def serve(runtime) -> Capability`, called before the capabilities start. The
leak receivers are there: a webhook delivered to a follower (behind a load balancer) is verified and
recorded by it, and the leader's `leaks` capability, which attaches to the same receivers, contains it.
"""

from __future__ import annotations

DAEMON_CAPABILITIES: list[tuple[str, str]] = [
    ("alerts", "keywatch.notify.service"),
    ("policies", "keywatch.engine.service"),
    ("usage", "keywatch.usage.service"),
    ("leak_scan", "keywatch.leaks.scan_service"),  # scheduled scans: findings contained by leaks
    ("rotation", "keywatch.rotation.service"),  # resumes rotations once alerts and policies are up
    ("leaks", "keywatch.leaks.service"),  # last: receivers open once containment has every part it uses
]

EVERY_INSTANCE: list[tuple[str, str]] = [
    ("leak_receivers", "keywatch.leaks.service"),  # record reports on every instance; the leader acts on them
]
