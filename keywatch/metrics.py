"""Prometheus metrics.

Current state (per key) is rendered from the in-memory snapshot, never from the database or a provider, so a
removed key leaves no stale series. An HTTP scrape gets the per-key part as rendered at most MAX_AGE (1 s)
before it arrived (kept between scrapes, re-rendered where a state changed) and the registry read at once;
iterating `exposition_chunks()` renders everything fresh. Events (probes, cycle timing) are ordinary counters
and histograms. No label ever holds a secret or part of one.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator

import structlog
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

log = structlog.get_logger("keywatch.metrics")

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
SEGMENT = 500  # keys per rendered block: what a probe invalidates, and what one step of a refresh renders
MAX_AGE = 1.0  # seconds: the per-key values an HTTP scrape gets were read at most this long before it arrived
MAX_SCRAPERS = 16  # scrapers (by address) whose interval is followed, to have their rendering made before they come


def _num(value: float) -> str:
    common = _COMMON.get(value)
    if common is not None:
        return common
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


def _joiners(name: str, label: str, values: list[str], only_current: bool) -> dict[str, tuple[str, ...]]:
    """For each current value of a one-of-N family, the pieces `base.join(pieces)` turns into a key's lines."""
    out: dict[str, tuple[str, ...]] = {}
    for current in values:
        lines = [(v, "1.0" if v == current else "0.0") for v in values if not only_current or v == current]
        pieces = [f"{name}{{"]
        for i, (v, n) in enumerate(lines):
            pieces.append(f',{label}="{v}"}} {n}\n' + (f"{name}{{" if i < len(lines) - 1 else ""))
        out[current] = tuple(pieces)
    return out


_Family = Callable[[list[KeyState], list[str], list[str]], str]


def _fast_families(mode: str) -> list[tuple[str, str, _Family]]:
    """The per-key families of `mode` in KEY_FAMILIES' order (then keywatch_key_info), each as a function
    that renders a run of keys from their label strings: the same samples as the table's rows, written as
    few Python operations per key as it takes."""
    if mode == "none":
        return []
    minimal = mode == "minimal"
    up = {True: ("keywatch_key_up{", "} 1.0\n"), False: ("keywatch_key_up{", "} 0.0\n")}
    comp = {True: ("keywatch_key_compromised{", "} 1.0\n"), False: ("keywatch_key_compromised{", "} 0.0\n")}
    health = _joiners("keywatch_key_health", "health", HEALTH_VALUES, minimal)  # str enums: members hash as values
    admin = _joiners("keywatch_key_admin_state", "state", ADMIN_VALUES, minimal)
    rl = "keywatch_key_ratelimit_remaining"

    def f_up(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([b.join(up[st.health.is_up]) for st, b in zip(sts, bases, strict=True)])

    def f_health(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([b.join(health[st.health]) for st, b in zip(sts, bases, strict=True)])

    def f_last_probe(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([f"keywatch_key_last_probe_timestamp_seconds{{{b}}} {_num(st.last_probe_at.timestamp())}\n"
                        for st, b in zip(sts, bases, strict=True) if st.last_probe_at])

    def f_since(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([f"keywatch_key_health_since_timestamp_seconds{{{b}}} {_num(st.health_since.timestamp())}\n"
                        for st, b in zip(sts, bases, strict=True) if st.health_since])

    def f_ratelimit(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        out = []
        for st, b in zip(sts, bases, strict=True):
            r = st.ratelimit
            if r is None:
                continue
            if r.requests_remaining is not None:
                out.append(f'{rl}{{{b},resource="requests"}} {_num(float(r.requests_remaining))}\n')
            if r.tokens_remaining is not None:
                out.append(f'{rl}{{{b},resource="tokens"}} {_num(float(r.tokens_remaining))}\n')
        return "".join(out)

    def f_latency(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([f"keywatch_key_probe_latency_seconds{{{b}}} {_num((st.latency_ms or 0.0) / 1000)}\n"
                        for st, b in zip(sts, bases, strict=True) if st.last_probe_at])

    def f_compromised(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([b.join(comp[bool(st.compromised)]) for st, b in zip(sts, bases, strict=True)])

    def f_admin(sts: list[KeyState], bases: list[str], _: list[str]) -> str:
        return "".join([b.join(admin[st.admin_state]) for st, b in zip(sts, bases, strict=True)])

    def f_info(_: list[KeyState], __: list[str], fulls: list[str]) -> str:
        return "".join([f"{INFO_FAMILY[0]}{{{full}}} 1.0\n" for full in fulls])

    fast = {"keywatch_key_up": f_up, "keywatch_key_health": f_health,
            "keywatch_key_last_probe_timestamp_seconds": f_last_probe,
            "keywatch_key_health_since_timestamp_seconds": f_since, "keywatch_key_ratelimit_remaining": f_ratelimit,
            "keywatch_key_probe_latency_seconds": f_latency, "keywatch_key_compromised": f_compromised,
            "keywatch_key_admin_state": f_admin}
    out = [(name, help_text, fast[name]) for name, help_text, _, _ in _families(mode)]
    out.append((*INFO_FAMILY, f_info))
    return out


Counts = tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[str, int]]


class _Piece:
    """One block of text deflated on its own (raw deflate, flushed to a byte boundary, no final block), with
    the text's CRC-32, its length and x^(8 * length) mod the CRC polynomial: pieces laid end to end are one
    deflate stream, and their CRCs fold into the whole text's (`_crc_fold`), so a gzip body is built from the
    kept pieces without the text."""

    __slots__ = ("crc", "data", "shift", "size")

    def __init__(self, text: bytes) -> None:
        self.data = _deflate(text, zlib.Z_SYNC_FLUSH)
        self.crc = zlib.crc32(text)
        self.size = len(text)
        self.shift = _crc_shift(len(text))


def _deflate(text: bytes, flush: int) -> bytes:
    """`text` as raw deflate (no header, no trailer: gzip's body): flushed to a byte boundary with
    Z_SYNC_FLUSH, so more can follow it in the same stream; ending the stream with Z_FINISH."""
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(text) + c.flush(flush)


_CRC_POLY = 0xEDB88320  # CRC-32 (gzip's), bit-reflected
_ZEROS = bytes(1 << 16)


def _crc_shift(n: int) -> int:
    """x^(8n) modulo the CRC-32 polynomial, bit-reflected: the linear part of crc32 over n zero bytes,
    applied to 1 (zlib's own crc32 does the work: crc32(zeros, v) ^ crc32(zeros, 0) is that part at v)."""
    v = 1 << 31
    while n:
        zeros = memoryview(_ZEROS)[:min(n, len(_ZEROS))]
        v = zlib.crc32(zeros, v) ^ zlib.crc32(zeros)
        n -= len(zeros)
    return v


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial, both bit-reflected (zlib's multmodp)."""
    m, p = 1 << 31, 0
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return p


def _crc_fold(pieces: Iterable[_Piece]) -> tuple[int, int]:
    """The CRC-32 and length of the pieces' texts end to end (zlib's crc32_combine, piece by piece)."""
    crc = size = 0
    for piece in pieces:
        crc = _multmodp(piece.shift, crc) ^ piece.crc
        size += piece.size
    return crc, size


class _Segment:
    """SEGMENT keys' text, one block per family, with the states it was rendered from and their fleet counts.
    Once `pack`ed, the blocks are kept deflated (a scrape's gzip body is made of them; the text is about 20
    times their size) and the text is dropped."""

    __slots__ = ("counts", "packed", "states", "text")

    def __init__(self, states: tuple[KeyState, ...], text: list[bytes], counts: Counts) -> None:
        self.states = states
        self.text: list[bytes] | None = text
        self.packed: list[_Piece | None] = []
        self.counts = counts

    def pack(self) -> None:
        """Deflate the blocks and let go of the text. CPU work without the interpreter lock (zlib lets go of
        it): the scrape cache runs it in a worker thread."""
        if self.text is not None:
            self.packed = [_Piece(b) if b else None for b in self.text]
            self.text = None


class KeyStateRenderer:
    """Prometheus text for the per-key families and the fleet aggregates, from a snapshot of the states.

    The keys are cut in runs of SEGMENT (in the snapshot's order); each run is kept as one block per family,
    with the states it was made from. A refresh re-renders only the runs where a state changed (a KeyState is
    immutable: a probe replaces it), and an idle refresh renders nothing. The scrape cache packs each run it
    renders (`_Segment.pack`), so what it keeps between scrapes is the deflated text, a twentieth of its size;
    `render` (a fresh rendering, read once) keeps the text as it is.
    """

    def __init__(self) -> None:
        self._mode: str | None = None
        self._families: list[tuple[str, str, _Family]] = []
        self._heads: list[bytes] = []
        self._packed_heads: list[_Piece] = []
        self._segments: list[_Segment] = []
        self._extra: dict[tuple[tuple[str, str], ...], str] = {}

    def steps(self, states: list[KeyState], mode: str) -> Iterator[_Segment]:
        """Bring the blocks up to `states`, yielding each run of keys rendered again (the caller may pack it,
        and let other work run between steps). `blocks()` and `pieces()` are complete once the iterator is
        exhausted."""
        if mode != self._mode:
            self._mode, self._families, self._segments = mode, _fast_families(mode), []
            self._heads = [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode()
                           for name, help_text, _ in self._families]
            self._packed_heads = [_Piece(h) for h in self._heads]
        if len(self._extra) > 2 * len(states) + 100:
            self._extra.clear()  # label sets no key has any more: rebuild lazily
        n = (len(states) + SEGMENT - 1) // SEGMENT
        del self._segments[n:]
        for i in range(n):
            run = tuple(states[i * SEGMENT:(i + 1) * SEGMENT])
            if i < len(self._segments):
                seg = self._segments[i]
                if seg.states == run:  # identity first, then value: the same text
                    seg.states = run  # and the replaced states are not kept alive for it
                    continue
                seg = self._segments[i] = self._render(run)
            else:
                seg = self._render(run)
                self._segments.append(seg)
            yield seg

    def blocks(self) -> list[bytes]:
        """The whole text, per-key families then fleet aggregates, as the blocks kept (no copy) of a renderer
        whose runs were not packed."""
        out = []
        for f, head in enumerate(self._heads):
            out.append(head)
            for seg in self._segments:
                if seg.text is None:
                    raise RuntimeError("the runs are packed: read pieces()")
                if seg.text[f]:
                    out.append(seg.text[f])
        out.append(self.fleet_text())
        return out

    def pieces(self) -> list[_Piece]:
        """The per-key families as the packed pieces kept, in the order of the text (no copy)."""
        for seg in self._segments:
            seg.pack()  # runs a refresh cut short rendered, never packed
        out = []
        for f, head in enumerate(self._packed_heads):
            out.append(head)
            out += [piece for seg in self._segments if (piece := seg.packed[f]) is not None]
        return out

    def fleet_text(self) -> bytes:
        return _fleet_text(self._segments)

    def render(self, states: Iterable[KeyState], mode: str = "all") -> list[bytes]:
        for _ in self.steps(list(states), mode):
            pass
        return self.blocks()

    def _render(self, run: tuple[KeyState, ...]) -> _Segment:
        if not self._families:
            return _Segment(run, [], _counts(run))
        extra_cache = self._extra
        bases, fulls = [], []
        for st in run:
            base = f'key="{_escape(st.key)}",provider="{_escape(st.provider)}"'
            items = tuple(st.labels.items())
            extra = extra_cache.get(items)
            if extra is None:
                extra = extra_cache[items] = "".join(
                    f',{n}="{_escape(v)}"' for n, v in sorted(_label_values(st.labels).items()))
            bases.append(base)
            fulls.append(base + extra)
        sts = list(run)
        blocks = [fn(sts, bases, fulls).encode() for _, _, fn in self._families]
        return _Segment(run, blocks, _counts(run))


def _counts(states: Iterable[KeyState]) -> Counts:
    health: dict[tuple[str, str], int] = {}
    admin: dict[tuple[str, str], int] = {}
    compromised: dict[str, int] = {}
    for st in states:
        p = st.provider
        k = (p, str(st.health))
        health[k] = health.get(k, 0) + 1
        k = (p, str(st.admin_state))
        admin[k] = admin.get(k, 0) + 1
        compromised[p] = compromised.get(p, 0) + (1 if st.compromised else 0)
    return health, admin, compromised


def _fleet_text(segments: list[_Segment]) -> bytes:
    health: dict[tuple[str, str], int] = {}
    admin: dict[tuple[str, str], int] = {}
    compromised: dict[str, int] = {}
    for seg in segments:
        h, a, c = seg.counts
        for k, n in h.items():
            health[k] = health.get(k, 0) + n
        for k, n in a.items():
            admin[k] = admin.get(k, 0) + n
        for p, n in c.items():
            compromised[p] = compromised.get(p, 0) + n
    for p in compromised:
        for v in HEALTH_VALUES:
            health.setdefault((p, v), 0)
        for v in ADMIN_VALUES:
            admin.setdefault((p, v), 0)
    out = []
    (hn, hh, hl), (an, ah, al), (cn, ch, _) = FLEET_FAMILIES
    out.append(f"# HELP {hn} {hh}\n# TYPE {hn} gauge\n")
    out += [f'{hn}{{provider="{_escape(p)}",{hl}="{v}"}} {n}.0\n' for (p, v), n in sorted(health.items())]
    out.append(f"# HELP {an} {ah}\n# TYPE {an} gauge\n")
    out += [f'{an}{{provider="{_escape(p)}",{al}="{v}"}} {n}.0\n' for (p, v), n in sorted(admin.items())]
    out.append(f"# HELP {cn} {ch}\n# TYPE {cn} gauge\n")
    out += [f'{cn}{{provider="{_escape(p)}"}} {n}.0\n' for p, n in sorted(compromised.items())]
    return "".join(out).encode()


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
        self._probe_children: dict[tuple[str, str], tuple[Histogram, Counter]] = {}
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
        self._cache = _ScrapeCache()
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

    def exposition_chunks(self) -> Exposition:
        """The /metrics body: iterated (from one thread at a time), it is rendered fresh, every registered
        metric then the per-key families; the HTTP server sends its `prepared` form instead."""
        return Exposition(self)

    def exposition(self) -> bytes:
        return b"".join(self.exposition_chunks())

    def _fresh_chunks(self) -> Iterator[bytes]:
        collector = self._collector
        if collector is None:
            yield generate_latest(self.registry)
            return
        yield self._head(collector)
        yield from KeyStateRenderer().render(collector.snapshot().values(), self.per_key)

    def _head(self, collector: KeyStateCollector | None) -> bytes:
        if collector is None:
            return generate_latest(self.registry)
        collector.fast.active = True
        try:
            return generate_latest(self.registry)
        finally:
            collector.fast.active = False

    async def prepared(self, gzip: bool, scraper: str | None = None) -> tuple[Body, str | None]:
        """What an HTTP scrape sends: the per-key families and fleet aggregates as rendered at most MAX_AGE
        before the scrape arrived (kept between scrapes, deflated; re-rendered only where a state changed, in
        steps on the event loop, each run deflated in a worker thread), then every registered metric, read
        now. gzip-compressed when `gzip`, made of the kept pieces; otherwise the pieces are inflated as the
        body is written. `scraper` (its address) lets a scraper that comes at a steady interval find its rendering
        made before it comes."""
        collector = self._collector
        rendering = None
        if collector is not None:
            rendering = await self._cache.current(collector.snapshot, self.per_key, scraper)
        head = self._head(collector)
        if rendering is None:
            return (Body([_gzip_whole(head)]), "gzip") if gzip else (Body([head]), None)
        if gzip:
            return Body(rendering.gzip(head)), "gzip"
        return rendering.text(head), None

    def observe_probe(self, provider: str, health: str, seconds: float) -> None:
        children = self._probe_children.get((provider, health))
        if children is None:  # labels() takes a lock and builds a key each time: once a provider and health
            children = self._probe_children[(provider, health)] = (self.probe_duration.labels(provider),
                                                                   self.probes.labels(provider, health))
        children[0].observe(seconds)
        children[1].inc()


class Exposition:
    """The /metrics body as `Metrics.exposition_chunks` gives it: an iterator of fresh chunks, which
    in-process readers and tests join, and `prepared`, the form the HTTP server sends."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._chunks: Iterator[bytes] | None = None

    def __iter__(self) -> Exposition:
        return self

    def __next__(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._metrics._fresh_chunks()
        return next(self._chunks)

    async def prepared(self, gzip: bool, scraper: str | None = None) -> tuple[Body, str | None]:
        return await self._metrics.prepared(gzip, scraper)


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no time, unknown OS
GZIP_LEVEL = 1  # the text is repetitive: level 1 makes it about 20 times smaller, at a third of level 6's time


class _Rendering:
    """One complete rendering of the per-key part, kept while it is fresh enough to serve: the packed
    pieces of the per-key families (shared with the renderer, no copy), their CRC and length, and the fleet
    aggregates' text."""

    def __init__(self, pieces: list[_Piece], fleet: bytes, taken_at: float, mode: str) -> None:
        self.pieces = [p.data for p in pieces]
        self.crc, self.size = _crc_fold(pieces)
        self.fleet = fleet
        self.taken_at = taken_at  # time.monotonic() when the snapshot was read
        self.mode = mode

    def gzip(self, tail: bytes) -> list[bytes]:
        """One gzip member: the pieces (one deflate stream, end to end), then the fleet aggregates and `tail`
        compressed and ending the stream, and the whole text's CRC and length."""
        rest = self.fleet + tail
        end = _deflate(rest, zlib.Z_FINISH)
        crc = _multmodp(_crc_shift(len(rest)), self.crc) ^ zlib.crc32(rest)
        return [GZIP_HEADER, *self.pieces, end, struct.pack("<II", crc, (self.size + len(rest)) & 0xFFFFFFFF)]

    def text(self, tail: bytes) -> Body:
        """The text itself, for a scraper that does not take gzip: its length is known beforehand, and the
        pieces are inflated one at a time as the server writes them (one run of keys' family, tens of KB),
        so the text never exists whole (81 MB at 50,000 keys)."""
        return Body(_inflated(self.pieces, self.fleet, tail), self.size + len(self.fleet) + len(tail))


def _inflated(pieces: list[bytes], fleet: bytes, tail: bytes) -> Iterator[bytes]:
    d = zlib.decompressobj(-zlib.MAX_WBITS)  # one stream: each piece ends on a flush, so it comes out whole
    for p in pieces:
        yield d.decompress(p)
    yield fleet
    yield tail


class Body:
    """A scrape's body as the server writes it: `length` bytes in all, in blocks made as they are taken."""

    def __init__(self, blocks: Iterable[bytes], length: int | None = None) -> None:
        if length is None:
            blocks = list(blocks)
            length = sum(len(b) for b in blocks)
        self.length = length
        self._blocks = blocks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._blocks)


def _gzip_whole(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


class _ScrapeCache:
    """The last rendering of the per-key part, refreshed when a scrape finds it older than MAX_AGE.

    A refresh reads one snapshot and renders, on the event loop, one run of keys per step, letting the
    probes' callbacks run between steps; it re-renders only the runs where a state changed. Scrapes that
    arrive meanwhile wait for it and send what it made; one refresh runs at a time. Two ways keep a scrape
    from waiting for one:

    - a scraper that comes at a steady interval longer than 2 x MAX_AGE (Prometheus: every 15 s or so) is
      expected: the refresh starts shortly before its next scrape is due (`_lead` ahead), so the scrape finds
      the rendering made, less than MAX_AGE old;
    - a scrape served a rendering older than half of MAX_AGE starts the next refresh behind it, so scrapers
      that come often (several a second) find it made.

    A scraper that comes at no steady interval waits for the runs that changed since the last refresh.
    """

    def __init__(self) -> None:
        self._renderer = KeyStateRenderer()
        self._current: _Rendering | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._ahead: asyncio.Task[_Rendering] | None = None
        self._render_s = 0.0  # how long recent refreshes took (the slowest, decaying)
        self._last_scrape: dict[str, float] = {}  # scraper -> time.monotonic() of its last scrape
        self._expected: dict[str, asyncio.TimerHandle] = {}  # scraper -> the refresh before its next scrape

    async def current(self, snapshot: SnapshotFn, mode: str, scraper: str | None = None) -> _Rendering:
        asked = time.monotonic()
        steady = scraper is not None and self._expect(scraper, asked, snapshot, mode)
        cur = self._current
        if cur is not None and cur.mode == mode and cur.taken_at >= asked - MAX_AGE:
            if not steady and asked - cur.taken_at > MAX_AGE / 2:
                self._refresh_behind(snapshot, mode)
            return cur
        return await self._refreshed(snapshot, mode, asked - MAX_AGE)

    def _expect(self, scraper: str, asked: float, snapshot: SnapshotFn, mode: str) -> bool:
        """Note a scrape; when this scraper's last one came more than 2 x MAX_AGE ago, start the refresh for
        its next scrape, due after as long again. True when it was so expected."""
        last = self._last_scrape.pop(scraper, None)
        self._last_scrape[scraper] = asked
        if (timer := self._expected.pop(scraper, None)) is not None:
            timer.cancel()
        while len(self._last_scrape) > MAX_SCRAPERS:  # the scrapers not seen for longest are forgotten
            gone = next(iter(self._last_scrape))
            del self._last_scrape[gone]
            if (timer := self._expected.pop(gone, None)) is not None:
                timer.cancel()
        if last is None or asked - last <= 2 * MAX_AGE:
            return False
        self._expected[scraper] = asyncio.get_running_loop().call_later(
            max(0.0, asked - last - self._lead()), self._before_scrape, scraper, snapshot, mode)
        return True

    def _lead(self) -> float:
        """How long before an expected scrape its refresh starts: twice the time recent refreshes took, and
        within MAX_AGE with room to spare (the rendering must still be fresh enough when the scrape comes,
        a little early or late)."""
        return min(0.8 * MAX_AGE, 0.5 + 2 * self._render_s)

    def _before_scrape(self, scraper: str, snapshot: SnapshotFn, mode: str) -> None:
        self._expected.pop(scraper, None)
        self._refresh_behind(snapshot, mode)

    def _refresh_behind(self, snapshot: SnapshotFn, mode: str) -> None:
        if self._ahead is None:
            self._ahead = asyncio.get_running_loop().create_task(
                self._refreshed(snapshot, mode, time.monotonic()))
            self._ahead.add_done_callback(self._ahead_done)

    def _ahead_done(self, task: asyncio.Task[_Rendering]) -> None:
        self._ahead = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("metrics_refresh_failed", error=type(exc).__name__)  # the next scrape tries again

    async def _refreshed(self, snapshot: SnapshotFn, mode: str, oldest: float) -> _Rendering:
        """The current rendering if its snapshot was read at `oldest` or later, else a new one."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            cur = self._current
            if cur is not None and cur.mode == mode and cur.taken_at >= oldest:
                return cur
            taken_at = time.monotonic()
            states = list(snapshot().values())
            for seg in self._renderer.steps(states, mode):
                await asyncio.to_thread(seg.pack)  # the event loop goes on meanwhile
            new = _Rendering(self._renderer.pieces(), self._renderer.fleet_text(), taken_at, mode)
            self._current = new
            # The slowest of the recent refreshes (an idle one renders nothing): what the next may take.
            self._render_s = max(time.monotonic() - taken_at, 0.9 * self._render_s)
            return new
