"""Prometheus metrics.

Current state (per key) is built fresh at every scrape from the in-memory snapshot, so a removed key
leaves no stale series and a scrape never touches the database or a provider. Events (probes, cycle
timing) are ordinary counters and histograms. No label ever holds a secret or part of one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from keywatch import __version__
from keywatch.domain import PROBED_HEALTH_VALUES, AdminState, Health, KeyState

# No `<counter>_created` series: they double the counters' series and no rule or dashboard reads them.
disable_created_metrics()

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
PER_KEY_MODES = ("all", "minimal", "none")

# The per-key families: (name, help, extra label, rows, kept in `minimal`). One table serves both the registry
# collector (get_sample_value, tests) and the cached text rendering /metrics uses at thousands of keys.
# In `minimal`, the one-of-N families (health, admin state) carry only their current series (value 1).
KEY_FAMILIES: list[tuple[str, str, str | None, Rows, bool]] = [
    ("keywatch_key_up", "1 when the key's last probe was healthy or rate_limited", None,
     lambda st: [(None, 1.0 if st.health.is_up else 0.0)], True),
    ("keywatch_key_health", "1 for the key's current health (unknown: not probed yet), 0 for the others", "health",
     lambda st: [(v, 1.0 if v == st.health else 0.0) for v in HEALTH_VALUES], True),
    ("keywatch_key_last_probe_timestamp_seconds", "Unix time of the key's last probe", None,
     lambda st: [(None, st.last_probe_at.timestamp())] if st.last_probe_at else [], True),
    ("keywatch_key_health_since_timestamp_seconds", "Unix time the key entered its current health", None,
     lambda st: [(None, st.health_since.timestamp())] if st.health_since else [], False),
    ("keywatch_key_ratelimit_remaining",
     "Remaining requests or tokens in the provider's rate-limit window (last probe)", "resource",
     lambda st: [(r, v) for r in ("requests", "tokens") if (v := _rl(st, r)) is not None], False),
    ("keywatch_key_probe_latency_seconds", "Latency of the key's last probe", None,
     lambda st: [(None, (st.latency_ms or 0.0) / 1000)] if st.last_probe_at else [], False),
    ("keywatch_key_compromised", "1 when the provider signals the key as exposed (e.g. AWS quarantine policy)",
     None, lambda st: [(None, 1.0 if st.compromised else 0.0)], False),
    ("keywatch_key_admin_state", "1 for the key's admin state (what keywatch or a person decided)", "state",
     lambda st: [(v, 1.0 if v == st.admin_state else 0.0) for v in ADMIN_VALUES], True),
]
ONE_OF_N = {"keywatch_key_health", "keywatch_key_admin_state"}
INFO_FAMILY = ("keywatch_key_info", "Always 1; the key's configured labels (label_*), for joins")

# Fleet aggregates: always exposed, whatever `daemon.metrics_per_key` says; a handful of series per provider.
FLEET_FAMILIES = [
    ("keywatch_keys_by_health", "Keys in each health, per provider (unknown: not probed yet)", "health"),
    ("keywatch_keys_by_admin_state", "Keys in each admin state, per provider", "state"),
    ("keywatch_keys_compromised", "Keys the provider signals as exposed, per provider", None),
]


def _families(mode: str) -> list[tuple[str, str, str | None, Rows]]:
    if mode == "none":
        return []
    out = []
    for name, help_text, extra, rows, minimal in KEY_FAMILIES:
        if mode == "minimal":
            if not minimal:
                continue
            if name in ONE_OF_N:
                rows = (lambda f: lambda st: [r for r in f(st) if r[1] == 1.0])(rows)
        out.append((name, help_text, extra, rows))
    return out


def fleet_counts(states: Iterable[KeyState]) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int],
                                                      dict[str, int]]:
    health: dict[tuple[str, str], int] = {}
    admin: dict[tuple[str, str], int] = {}
    compromised: dict[str, int] = {}
    for st in states:
        p = st.provider
        for v in HEALTH_VALUES:
            health.setdefault((p, v), 0)
        for v in ADMIN_VALUES:
            admin.setdefault((p, v), 0)
        health[(p, str(st.health))] += 1
        admin[(p, str(st.admin_state))] += 1
        compromised[p] = compromised.get(p, 0) + (1 if st.compromised else 0)
    return health, admin, compromised


class KeyStateCollector(Collector):
    """The per-key families and fleet aggregates for the registry. /metrics itself uses `KeyStateRenderer`,
    which is many times faster at the same output; `fast_exposition` tells this collector to step aside."""

    def __init__(self, snapshot: SnapshotFn, mode: str = "all") -> None:
        self.snapshot = snapshot
        self.mode = mode
        self.fast = threading.local()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        if getattr(self.fast, "active", False):
            return
        states = list(self.snapshot().values())
        for name, help_text, extra, rows in _families(self.mode):
            fam = GaugeMetricFamily(name, help_text, labels=["key", "provider", *([extra] if extra else [])])
            for st in states:
                for lv, value in rows(st):
                    fam.add_metric([st.key, st.provider, *([lv] if extra else [])], value)
            yield fam
        if self.mode != "none":
            fam = GaugeMetricFamily(*INFO_FAMILY, labels=["key", "provider"])
            for st in states:
                labels = {"key": st.key, "provider": st.provider, **_label_values(st.labels)}
                fam.samples.append(Sample(INFO_FAMILY[0], labels, 1.0, None, None))
            yield fam
        health, admin, compromised = fleet_counts(states)
        (hn, hh, hl), (an, ah, al), (cn, ch, _) = FLEET_FAMILIES
        fam = GaugeMetricFamily(hn, hh, labels=["provider", str(hl)])
        for (p, v), n in sorted(health.items()):
            fam.add_metric([p, v], n)
        yield fam
        fam = GaugeMetricFamily(an, ah, labels=["provider", str(al)])
        for (p, v), n in sorted(admin.items()):
            fam.add_metric([p, v], n)
        yield fam
        fam = GaugeMetricFamily(cn, ch, labels=["provider"])
        for p, n in sorted(compromised.items()):
            fam.add_metric([p], n)
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
    """Prometheus text for the per-key families, from a snapshot of the states, written directly.

    Each key's lines are rendered once per state it is in and kept (a KeyState is immutable: a probe
    replaces it), so a scrape re-renders only the keys probed since the last one and joins the rest: an
    idle scrape of 10,000 keys is a join of cached text, one during a cycle renders what the cycle changed.
    """

    def __init__(self) -> None:
        self._label_cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[str, str]] = {}
        self._lines: dict[str, tuple[KeyState, str, tuple[str, ...]]] = {}

    def _labels(self, st: KeyState) -> tuple[str, str]:
        cache_key = (st.key, st.provider, tuple(sorted(st.labels.items())))
        hit = self._label_cache.get(cache_key)
        if hit is None:
            base = f'key="{_escape(st.key)}",provider="{_escape(st.provider)}"'
            extra = "".join(f',{n}="{_escape(v)}"' for n, v in sorted(_label_values(st.labels).items()))
            hit = self._label_cache[cache_key] = (base, base + extra)
        return hit

    def _render_key(self, st: KeyState, mode: str, families: list[tuple[str, str, str | None, Rows]]
                    ) -> tuple[str, ...]:
        base, full = self._labels(st)
        out = []
        for name, _, extra, rows in families:
            if extra:
                out.append("".join(f'{name}{{{base},{extra}="{lv}"}} {_num(v)}\n' for lv, v in rows(st)))
            else:
                out.append("".join(f"{name}{{{base}}} {_num(v)}\n" for _, v in rows(st)))
        out.append(f"{INFO_FAMILY[0]}{{{full}}} 1.0\n")
        return tuple(out)

    def render(self, states: Iterable[KeyState], mode: str = "all") -> Iterator[bytes]:
        """The per-key families and the fleet aggregates, as encoded chunks of at most SLICE keys, produced
        as they are consumed."""
        states = list(states)
        if len(self._label_cache) > 2 * len(states) + 100:
            self._label_cache.clear()  # keys renamed or removed: rebuild lazily
        if len(self._lines) > 2 * len(states) + 100:
            self._lines.clear()
        families = _families(mode)
        if families:
            lines = []
            cache = self._lines
            for st in states:
                hit = cache.get(st.key)
                if hit is None or hit[0] is not st or hit[1] != mode:
                    hit = cache[st.key] = (st, mode, self._render_key(st, mode, families))
                lines.append(hit[2])
            for i, (name, help_text, _, _) in enumerate([*families, (*INFO_FAMILY, None, None)]):
                yield f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode()
                for lo in range(0, len(lines), SLICE):
                    yield "".join(k[i] for k in lines[lo:lo + SLICE]).encode()
        health, admin, compromised = fleet_counts(states)
        out = []
        (hn, hh, hl), (an, ah, al), (cn, ch, _) = FLEET_FAMILIES
        out.append(f"# HELP {hn} {hh}\n# TYPE {hn} gauge\n")
        out += [f'{hn}{{provider="{_escape(p)}",{hl}="{v}"}} {n}.0\n' for (p, v), n in sorted(health.items())]
        out.append(f"# HELP {an} {ah}\n# TYPE {an} gauge\n")
        out += [f'{an}{{provider="{_escape(p)}",{al}="{v}"}} {n}.0\n' for (p, v), n in sorted(admin.items())]
        out.append(f"# HELP {cn} {ch}\n# TYPE {cn} gauge\n")
        out += [f'{cn}{{provider="{_escape(p)}"}} {n}.0\n' for p, n in sorted(compromised.items())]
        yield "".join(out).encode()


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
        self.per_key = "all"

    def attach_state(self, snapshot: SnapshotFn) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = KeyStateCollector(snapshot, self.per_key)
        self.registry.register(self._collector)

    def set_per_key(self, mode: str) -> None:
        """`daemon.metrics_per_key`: which per-key series /metrics carries (all, minimal, none)."""
        if mode not in PER_KEY_MODES:
            raise ValueError(f"metrics_per_key must be one of {', '.join(PER_KEY_MODES)}, not {mode!r}")
        self.per_key = mode
        if self._collector is not None:
            self._collector.mode = mode

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
        yield from self._renderer.render(collector.snapshot().values(), self.per_key)

    def exposition(self) -> bytes:
        return b"".join(self.exposition_chunks())

    def observe_probe(self, provider: str, health: str, seconds: float) -> None:
        self.probe_duration.labels(provider).observe(seconds)
        self.probes.labels(provider, health).inc()
