"""The in-memory state: transitions only on change, and metrics built from it at scrape time."""

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from keywatch.domain import Health, ManagedKey, ProbeResult, RateLimit, Secret
from keywatch.metrics import Metrics
from keywatch.state import StateTracker

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def key(name: str, secret: str = "sk-proj-aaaaaaaaaaaaaaaaaaaa1111", **labels: str) -> ManagedKey:
    return ManagedKey(name=name, provider="openai", secret=Secret(secret), secret_ref="env:X", labels=labels)


def result(name: str, health: Health, at: datetime, **kw) -> ProbeResult:
    return ProbeResult(key=name, provider="openai", health=health, checked_at=at, latency_ms=12.0, **kw)


def test_transitions_only_on_change_and_consecutive_counts() -> None:
    t = StateTracker()
    t.sync_inventory([key("a")])
    first = t.apply(result("a", Health.HEALTHY, T0))
    assert first is not None and first.old is Health.UNKNOWN and first.new is Health.HEALTHY
    assert t.apply(result("a", Health.HEALTHY, T0 + timedelta(minutes=5))) is None
    assert t.states["a"].consecutive == 2
    change = t.apply(result("a", Health.INVALID, T0 + timedelta(minutes=10), http_status=401))
    assert change is not None and (change.old, change.new) == (Health.HEALTHY, Health.INVALID)
    st = t.states["a"]
    assert st.consecutive == 1 and st.health_since == T0 + timedelta(minutes=10) and st.http_status == 401


def test_rollups_aggregate_per_hour_and_health_and_drain_once() -> None:
    t = StateTracker()
    t.sync_inventory([key("a")])
    for i in range(6):
        t.apply(result("a", Health.HEALTHY, T0 + timedelta(minutes=10 * i)))
    states, rollups = t.drain()
    assert [s.key for s in states] == ["a"]
    by_hour = {(r.hour, r.health): r.count for r in rollups}
    assert by_hour == {(T0, "healthy"): 6}
    assert t.drain() == ([], [])


def counted(t: StateTracker) -> dict[tuple[str, datetime, str], tuple[int, float, float]]:
    return {(r.key, r.hour, r.health): (r.count, r.latency_sum_ms, r.latency_max_ms) for r in t.drain()[1]}


def test_every_probe_is_counted_in_its_hour_and_health_whatever_happened_to_the_key_before_the_drain() -> None:
    """A key probed once since the last drain is counted from its state; probed again, replaced by a
    containment, given a new secret, removed, or put back after a failed write, every probe still counts once,
    with the health and hour it had."""
    from dataclasses import replace

    from keywatch.domain import AdminState

    t = StateTracker()
    t.sync_inventory([key("a"), key("b"), key("c"), key("d"), key("e")])
    late = T0 + timedelta(minutes=59)
    for name in "abcde":
        t.apply(ProbeResult(key=name, provider="openai", health=Health.HEALTHY, checked_at=late, latency_ms=10.0))
    # a: probed again, in the next hour and with another health; b: disabled by a containment;
    # c: a new secret (its health starts over); d: removed from the inventory; e: nothing more.
    t.apply(ProbeResult(key="a", provider="openai", health=Health.INVALID, checked_at=late + timedelta(minutes=2),
                        latency_ms=30.0))
    t.set(replace(t.states["b"], admin_state=AdminState.DISABLED, health=Health.INVALID))
    t.sync_inventory([key("a"), key("b"), key("c", secret="sk-proj-bbbbbbbbbbbbbbbbbbbb2222"), key("e")])
    assert t.states["c"].health is Health.UNKNOWN
    hour, next_hour = T0, T0 + timedelta(hours=1)
    first = counted(t)
    assert first == {("a", hour, "healthy"): (1, 10.0, 10.0), ("a", next_hour, "invalid"): (1, 30.0, 30.0),
                     ("b", hour, "healthy"): (1, 10.0, 10.0), ("c", hour, "healthy"): (1, 10.0, 10.0),
                     ("d", hour, "healthy"): (1, 10.0, 10.0), ("e", hour, "healthy"): (1, 10.0, 10.0)}
    assert counted(t) == {}  # drained once
    # A failed write puts a drain back; a probe meanwhile adds to it.
    t.apply(ProbeResult(key="e", provider="openai", health=Health.HEALTHY, checked_at=next_hour, latency_ms=20.0))
    states, rollups = t.drain()
    t.apply(ProbeResult(key="e", provider="openai", health=Health.HEALTHY, checked_at=next_hour + timedelta(minutes=1),
                        latency_ms=40.0))
    t.restore(states, rollups)
    assert counted(t) == {("e", next_hour, "healthy"): (2, 60.0, 40.0)}


def test_new_secret_under_same_name_resets_health() -> None:
    """A new secret (a rotation, an operator's swap) starts over: not the old one's health, and not its
    compromise flag (which keeps a key out of automatic re-enabling and shows on /metrics)."""
    t = StateTracker()
    t.sync_inventory([key("a")])
    t.apply(result("a", Health.INVALID, T0, compromised=True, compromise_reason="AWS quarantine policy"))
    t.sync_inventory([key("a", secret="sk-proj-bbbbbbbbbbbbbbbbbbbb2222")])
    st = t.states["a"]
    assert st.health is Health.UNKNOWN and st.compromised is False and st.compromise_reason is None


def test_removed_key_leaves_no_series() -> None:
    t = StateTracker()
    t.sync_inventory([key("a", team="search"), key("b")])
    t.apply(result("a", Health.RATE_LIMITED, T0, ratelimit=RateLimit(requests_remaining=0, tokens_remaining=5)))
    t.apply(result("b", Health.QUOTA_EXHAUSTED, T0))
    m = Metrics(CollectorRegistry())
    m.attach_state(t.snapshot)
    r = m.registry
    assert r.get_sample_value("keywatch_key_up", {"key": "a", "provider": "openai"}) == 1.0
    assert r.get_sample_value("keywatch_key_up", {"key": "b", "provider": "openai"}) == 0.0
    assert r.get_sample_value("keywatch_key_health",
                              {"key": "b", "provider": "openai", "health": "quota_exhausted"}) == 1.0
    assert r.get_sample_value("keywatch_key_health", {"key": "b", "provider": "openai", "health": "healthy"}) == 0.0
    assert r.get_sample_value("keywatch_key_ratelimit_remaining",
                              {"key": "a", "provider": "openai", "resource": "tokens"}) == 5.0
    assert r.get_sample_value("keywatch_key_info", {"key": "a", "provider": "openai", "label_team": "search"}) == 1
    assert r.get_sample_value("keywatch_key_last_probe_timestamp_seconds",
                              {"key": "a", "provider": "openai"}) == T0.timestamp()
    t.sync_inventory([key("a", team="search")])
    text = generate_latest(r).decode()
    assert 'key="b"' not in text
    assert "sk-proj" not in text


def test_metrics_endpoint_text_matches_the_registry_samples() -> None:
    """/metrics renders per-key families directly; what it says must equal what the registry collects."""
    from prometheus_client.parser import text_string_to_metric_families

    t = StateTracker()
    t.sync_inventory([key("a", team="search", **{"cost-center": 'x"y\\z'}), key("b"), key("c", env="prod")])
    t.apply(result("a", Health.RATE_LIMITED, T0, ratelimit=RateLimit(requests_remaining=0, tokens_remaining=5)))
    t.apply(result("b", Health.INVALID, T0 + timedelta(seconds=1.5)))
    m = Metrics(CollectorRegistry())
    m.attach_state(t.snapshot)

    def samples(text: str) -> set[tuple[str, tuple, float]]:
        return {(s.name, tuple(sorted(s.labels.items())), s.value)
                for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name.startswith("keywatch_key_")}

    fast = m.exposition().decode()
    generic = generate_latest(m.registry).decode()
    assert samples(fast) == samples(generic)
    assert len(samples(fast)) > 40
    assert fast.count("# TYPE keywatch_key_health gauge") == 1


def test_every_probe_is_counted_by_provider_and_health_and_timed_by_provider() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    for provider, health, seconds in [("openai", "healthy", 0.02), ("openai", "healthy", 0.3),
                                      ("openai", "invalid", 0.04), ("anthropic", "healthy", 0.07)]:
        m.observe_probe(provider, health, seconds)
    value = registry.get_sample_value
    assert value("keywatch_probes_total", {"provider": "openai", "health": "healthy"}) == 2
    assert value("keywatch_probes_total", {"provider": "openai", "health": "invalid"}) == 1
    assert value("keywatch_probes_total", {"provider": "anthropic", "health": "healthy"}) == 1
    assert value("keywatch_probe_duration_seconds_count", {"provider": "openai"}) == 3
    assert value("keywatch_probe_duration_seconds_sum", {"provider": "openai"}) == 0.02 + 0.3 + 0.04
    assert value("keywatch_probe_duration_seconds_bucket", {"provider": "openai", "le": "0.05"}) == 2
