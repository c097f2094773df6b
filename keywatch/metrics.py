"""Prometheus metrics.

Current state (per key) is built fresh at every scrape from the in-memory snapshot, so a removed key
leaves no stale series and a scrape never touches the database or a provider. Events (probes, cycle
timing) are ordinary counters and histograms. No label ever holds a secret or part of one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from keywatch import __version__
from keywatch.domain import PROBED_HEALTH_VALUES, AdminState, Health, KeyState

HEALTH_VALUES = [*(str(h) for h in PROBED_HEALTH_VALUES), str(Health.UNKNOWN)]
ADMIN_VALUES = [str(a) for a in AdminState]
_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")

SnapshotFn = Callable[[], dict[str, KeyState]]


class KeyStateCollector(Collector):
    def __init__(self, snapshot: SnapshotFn) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        states = list(self.snapshot().values())
        up = GaugeMetricFamily("keywatch_key_up", "1 when the key's last probe was healthy or rate_limited",
                               labels=["key", "provider"])
        health = GaugeMetricFamily("keywatch_key_health", "1 for the key's current health, 0 for the others",
                                   labels=["key", "provider", "health"])
        last = GaugeMetricFamily("keywatch_key_last_probe_timestamp_seconds", "Unix time of the key's last probe",
                                 labels=["key", "provider"])
        since = GaugeMetricFamily("keywatch_key_health_since_timestamp_seconds",
                                  "Unix time the key entered its current health", labels=["key", "provider"])
        rl = GaugeMetricFamily("keywatch_key_ratelimit_remaining",
                               "Remaining requests or tokens in the provider's rate-limit window (last probe)",
                               labels=["key", "provider", "resource"])
        latency = GaugeMetricFamily("keywatch_key_probe_latency_seconds", "Latency of the key's last probe",
                                    labels=["key", "provider"])
        comp = GaugeMetricFamily("keywatch_key_compromised",
                                 "1 when the provider signals the key as exposed (e.g. AWS quarantine policy)",
                                 labels=["key", "provider"])
        admin = GaugeMetricFamily("keywatch_key_admin_state",
                                  "1 for the key's admin state (what keywatch or a person decided)",
                                  labels=["key", "provider", "state"])
        # keywatch_key_labels joins the configured labels (team, env ...) onto every per-key series.
        labels_family = GaugeMetricFamily("keywatch_key_labels", "Always 1; carries the key's configured labels",
                                          labels=["key", "provider"])
        for st in states:
            k, p = st.key, st.provider
            h = str(st.health)
            up.add_metric([k, p], 1.0 if st.health.is_up else 0.0)
            for v in HEALTH_VALUES:
                health.add_metric([k, p, v], 1.0 if v == h else 0.0)
            if st.last_probe_at is not None:
                last.add_metric([k, p], st.last_probe_at.timestamp())
                latency.add_metric([k, p], (st.latency_ms or 0.0) / 1000)
            if st.health_since is not None:
                since.add_metric([k, p], st.health_since.timestamp())
            if st.ratelimit is not None:
                if st.ratelimit.requests_remaining is not None:
                    rl.add_metric([k, p, "requests"], float(st.ratelimit.requests_remaining))
                if st.ratelimit.tokens_remaining is not None:
                    rl.add_metric([k, p, "tokens"], float(st.ratelimit.tokens_remaining))
            comp.add_metric([k, p], 1.0 if st.compromised else 0.0)
            a = str(st.admin_state)
            for v in ADMIN_VALUES:
                admin.add_metric([k, p, v], 1.0 if v == a else 0.0)
            labels_family.samples.append(
                Sample("keywatch_key_labels", {"key": k, "provider": p, **_label_values(st.labels)}, 1.0, None, None)
            )
        yield from (up, health, last, since, rl, latency, comp, admin, labels_family)


def _label_values(labels: dict[str, str]) -> dict[str, str]:
    return {"label_" + _LABEL_RE.sub("_", n): v for n, v in labels.items()}


class Metrics:
    """Every metric keywatch exposes, on one registry passed in (tests use a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:
            ProcessCollector(registry=r)  # process_* (memory, CPU) for the dashboard's daemon panels
        self.probe_duration = Histogram(
            "keywatch_probe_duration_seconds", "Time one probe took", ["provider"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.probes = Counter("keywatch_probes", "Probes made, by result", ["provider", "health"], registry=r)
        self.transitions = Counter("keywatch_transitions", "Changes of key health", ["provider", "to"], registry=r)
        self.build_info = Gauge("keywatch_build_info", "Always 1; the running version", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self.ready = Gauge("keywatch_ready", "1 when config is loaded, the database reachable and a cycle done",
                           registry=r)
        self.cycle_duration = Gauge("keywatch_cycle_duration_seconds", "Duration of the last probe cycle",
                                    registry=r)
        self.last_cycle = Gauge("keywatch_last_cycle_timestamp_seconds", "Unix time the last probe cycle ended",
                                registry=r)
        self.keys = Gauge("keywatch_keys", "Keys in the inventory", ["provider"], registry=r)
        self.db_up = Gauge("keywatch_database_up", "1 when the last database write succeeded", registry=r)
        self.config_reloads = Counter("keywatch_config_reloads", "Config reloads (SIGHUP)", ["result"], registry=r)
        self._collector: KeyStateCollector | None = None

    def attach_state(self, snapshot: SnapshotFn) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = KeyStateCollector(snapshot)
        self.registry.register(self._collector)

    def observe_probe(self, provider: str, health: str, seconds: float) -> None:
        self.probe_duration.labels(provider).observe(seconds)
        self.probes.labels(provider, health).inc()
