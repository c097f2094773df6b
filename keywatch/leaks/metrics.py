"""The leak capability's metrics, on the daemon's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Report to provider-side deactivation: most land well under a second; a slow provider shows in the tail.
CONTAINMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LeakMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reports = Counter(
            "keywatch_leak_reports",
            "Leak reports received, by source (github, github_partner, generic, scan, aws_health, provider) and "
            "whether they matched a managed key (true, false)",
            ["source", "matched"],
            registry=registry,
        )
        self.refused = Counter(
            "keywatch_leak_requests_refused",
            "Requests a leak receiver refused, by receiver and HTTP status",
            ["receiver", "status"],
            registry=registry,
        )
        self.containment = Histogram(
            "keywatch_containment_seconds",
            "Time from a leak report's arrival to the key's deactivation at the provider",
            buckets=CONTAINMENT_BUCKETS,
            registry=registry,
        )
        self.held_back = Counter(
            "keywatch_containment_blocked",
            "Containments held back by the pattern-only ceiling (leaks.pattern_limit_per_hour), by source",
            ["source"],
            registry=registry,
        )
