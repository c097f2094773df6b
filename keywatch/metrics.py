"""Prometheus metrics.

Current state (per key) is built fresh at every scrape from the in-memory snapshot, so a removed key
leaves no stale series and a scrape never touches the database or a provider. Events (probes, cycle
timing) are ordinary counters and histograms. No label ever holds a secret or part of one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from keywatch import __version__
from keywatch.domain import PROBED_HEALTH_VALUES, AdminState, Health, KeyState

HEALTH_VALUES = [*(str(h) for h in PROBED_HEALTH_VALUES), str(Health.UNKNOWN)]
ADMIN_VALUES = [str(a) for a in AdminState]
_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")

SnapshotFn = Callable[[], dict[str, KeyState]]


def _rl(st: KeyState, resource: str) -> float | None:
    if st.ratelimit is None:
        return None
    v = st.ratelimit.requests_remaining if resource == "requests" else st.ratelimit.tokens_remaining
    return None if v is None else float(v)


Rows = Callable[[KeyState], list[tuple[str | None, float]]]

# The per-key families: (name, help, extra label, rows). One table serves both the registry collector
# (get_sample_value, tests) and the fast text rendering /metrics uses at thousands of keys.
KEY_FAMILIES: list[tuple[str, str, str | None, Rows]] = [
    ("keywatch_key_up", "1 when the key's last probe was healthy or rate_limited", None,
     lambda st: [(None, 1.0 if st.health.is_up else 0.0)]),
    ("keywatch_key_health", "1 for the key's current health, 0 for the others", "health",
     lambda st: [(v, 1.0 if v == st.health else 0.0) for v in HEALTH_VALUES]),
    ("keywatch_key_last_probe_timestamp_seconds", "Unix time of the key's last probe", None,
     lambda st: [(None, st.last_probe_at.timestamp())] if st.last_probe_at else []),
    ("keywatch_key_health_since_timestamp_seconds", "Unix time the key entered its current health", None,
     lambda st: [(None, st.health_since.timestamp())] if st.health_since else []),
    ("keywatch_key_ratelimit_remaining",
     "Remaining requests or tokens in the provider's rate-limit window (last probe)", "resource",
     lambda st: [(r, v) for r in ("requests", "tokens") if (v := _rl(st, r)) is not None]),
    ("keywatch_key_probe_latency_seconds", "Latency of the key's last probe", None,
     lambda st: [(None, (st.latency_ms or 0.0) / 1000)] if st.last_probe_at else []),
    ("keywatch_key_compromised", "1 when the provider signals the key as exposed (e.g. AWS quarantine policy)",
     None, lambda st: [(None, 1.0 if st.compromised else 0.0)]),
    ("keywatch_key_admin_state", "1 for the key's admin state (what keywatch or a person decided)", "state",
     lambda st: [(v, 1.0 if v == st.admin_state else 0.0) for v in ADMIN_VALUES]),
]
LABELS_FAMILY = ("keywatch_key_labels", "Always 1; carries the key's configured labels")


class KeyStateCollector(Collector):
    """The per-key families for the registry. /metrics itself uses `render_key_states`, which is
    several times faster at the same output; `fast_exposition` tells this collector to step aside."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self.snapshot = snapshot
        self.fast = threading.local()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        if getattr(self.fast, "active", False):
            return
        states = list(self.snapshot().values())
        for name, help_text, extra, rows in KEY_FAMILIES:
            fam = GaugeMetricFamily(name, help_text, labels=["key", "provider", *([extra] if extra else [])])
            for st in states:
                for lv, value in rows(st):
                    fam.add_metric([st.key, st.provider, *([lv] if extra else [])], value)
            yield fam
        fam = GaugeMetricFamily(*LABELS_FAMILY, labels=["key", "provider"])
        for st in states:
            labels = {"key": st.key, "provider": st.provider, **_label_values(st.labels)}
            fam.samples.append(Sample(LABELS_FAMILY[0], labels, 1.0, None, None))
        yield fam


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_COMMON = {0.0: "0.0", 1.0: "1.0"}
SLICE = 1000


def _num(value: float) -> str:
    common = _COMMON.get(value)
    if common is not None:
        return common
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


class KeyStateRenderer:
    """Prometheus text for the per-key families, written directly: label strings are built once per key
    and reused, so a scrape of 10,000 keys costs a fraction of the generic client's per-sample work."""

    def __init__(self) -> None:
        self._label_cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[str, str]] = {}

    def _labels(self, st: KeyState) -> tuple[str, str]:
        cache_key = (st.key, st.provider, tuple(sorted(st.labels.items())))
        hit = self._label_cache.get(cache_key)
        if hit is None:
            base = f'key="{_escape(st.key)}",provider="{_escape(st.provider)}"'
            extra = "".join(f',{n}="{_escape(v)}"' for n, v in sorted(_label_values(st.labels).items()))
            hit = self._label_cache[cache_key] = (base, base + extra)
        return hit

    def render(self, states: Iterable[KeyState]) -> Iterator[bytes]:
        """The per-key families as encoded chunks of at most SLICE keys, produced as they are consumed: a
        scrape's memory peak stays a few MB whatever the fleet size."""
        states = list(states)
        if len(self._label_cache) > 2 * len(states) + 100:
            self._label_cache.clear()  # keys renamed or removed: rebuild lazily
        labels = [self._labels(st) for st in states]
        for name, help_text, extra, rows in KEY_FAMILIES:
            yield f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode()
            for lo in range(0, len(states), SLICE):
                out = []
                for st, (base, _) in zip(states[lo:lo + SLICE], labels[lo:lo + SLICE], strict=True):
                    for lv, value in rows(st):
                        if extra:
                            out.append(f'{name}{{{base},{extra}="{lv}"}} {_num(value)}\n')
                        else:
                            out.append(f"{name}{{{base}}} {_num(value)}\n")
                yield "".join(out).encode()
        name, help_text = LABELS_FAMILY
        yield f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode()
        for lo in range(0, len(labels), SLICE):
            yield "".join(f"{name}{{{full}}} 1.0\n" for _, full in labels[lo:lo + SLICE]).encode()


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
        self.db_pending = Gauge("keywatch_database_pending",
                                "What waits to be written to the database, by kind (states, transitions, "
                                "rollups, events)", ["kind"], registry=r)
        self.db_dropped = Counter("keywatch_database_dropped",
                                  "What was never written to the database, by kind: dropped past the queue's "
                                  "bound during an outage, or still unwritten at shutdown", ["kind"], registry=r)
        self.config_reloads = Counter("keywatch_config_reloads", "Config reloads (SIGHUP)", ["result"], registry=r)
        self._collector: KeyStateCollector | None = None
        self._renderer = KeyStateRenderer()

    def attach_state(self, snapshot: SnapshotFn) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = KeyStateCollector(snapshot)
        self.registry.register(self._collector)

    def exposition_chunks(self) -> Iterator[bytes]:
        """The /metrics body in pieces, made as they are taken: every registered metric, then the per-key
        families rendered directly. Consume it from one thread at a time."""
        collector = self._collector
        if collector is None:
            yield generate_latest(self.registry)
            return
        collector.fast.active = True
        try:
            head = generate_latest(self.registry)
        finally:
            collector.fast.active = False
        yield head
        yield from self._renderer.render(collector.snapshot().values())

    def exposition(self) -> bytes:
        return b"".join(self.exposition_chunks())

    def observe_probe(self, provider: str, health: str, seconds: float) -> None:
        self.probe_duration.labels(provider).observe(seconds)
        self.probes.labels(provider, health).inc()
