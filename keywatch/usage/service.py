"""The usage capability inside the daemon (listed in keywatch.extensions.DAEMON_CAPABILITIES).

A scheduler job (`usage`, default hourly) pulls every source, stores the figures (a re-pulled window
replaces, never adds), then evaluates the budgets: thresholds announced once per period, `budget_exhausted`
on the runtime's signal board for the keys of a spent budget, a forecast warning when the burn rate runs a budget out
before its period ends. A source that fails keeps its last figures and is marked stale; nothing is zeroed.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from keywatch.domain import Alert, Event, Severity, Signal
from keywatch.providers import registry
from keywatch.runtime import NotLeader, Runtime, keep_interval_job
from keywatch.usage import anomaly
from keywatch.usage import budgets as bmod
from keywatch.usage.collectors import keyreport
from keywatch.usage.collectors.base import PullContext, Source
from keywatch.usage.config import BudgetConfig, UsageSettings
from keywatch.usage.forecast import burn_rate, exhaustion, human
from keywatch.usage.metrics import SourceView, UsageCollector, UsageSnapshot
from keywatch.usage.money import usd_text
from keywatch.usage.rows import WIDTHS, PullResult
from keywatch.usage.store import UsageStore

log = structlog.get_logger("keywatch.usage")
JOB_ID = "usage"


def account_collector(provider: str) -> Callable[[PullContext, Source], Awaitable[PullResult]] | None:
    """The collector of a provider whose usage is pulled per account (its ProviderInfo.account_usage)."""
    module = registry.info(provider).account_usage
    return importlib.import_module(f"keywatch.usage.collectors.{module}").pull if module else None

SIGNAL = "budget_exhausted"


@dataclass
class Outcome:
    results: dict[str, PullResult]
    statuses: list[bmod.BudgetStatus]


USAGE_MAX_BODY = 16 << 20  # bytes of one usage or cost page read at most (a probe answer: probe.max_body)


def settings_of(config: Any) -> UsageSettings:
    return getattr(config, "usage", None) or UsageSettings()


def budgets_of(config: Any) -> list[BudgetConfig]:
    return list(getattr(config, "budgets", None) or [])


def sources(inventory: Any, settings: UsageSettings) -> list[Source]:
    """Accounts with admin credentials, then groups of keys that report on themselves."""
    out: list[Source] = []
    wanted = set(settings.accounts) if settings.accounts is not None else None
    for name, account in inventory.accounts.items():
        info = registry.info(account.provider)
        if info.account_usage is None:
            continue
        if wanted is not None and name not in wanted:
            continue
        if wanted is None and info.account_usage_opt_in:
            continue
        out.append(Source(name, account.provider, account=account))
    groups: dict[tuple[str, str], Source] = {}
    for k in inventory.keys:
        if registry.info(k.provider).key_usage is None:
            continue
        group = k.account or k.name
        if wanted is not None and group not in wanted:
            continue
        src = groups.setdefault((k.provider, group), Source(group, k.provider))
        src.keys.append(k)
    return out + list(groups.values())


class UsageService:
    def __init__(self, rt: Runtime, store: UsageStore) -> None:
        self.rt = rt
        self.store = store
        self.snapshot = UsageSnapshot()
        self.key_ids: dict[str, dict[str, str]] = {}
        self.provider_totals: dict[str, dict[tuple[str, str], Decimal]] = {}  # source -> (scope, period) -> USD
        self.flagged: set[str] = set()
        self.firing: dict[str, datetime] = {}  # budget -> period start of its firing alert
        self._http: Any = None
        self._adapters: Any = None
        self._for_inventory: Any = None
        self._lock = asyncio.Lock()
        self._closing: Any = None
        self.anomalies = anomaly.AnomalyWatch()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _clients(self) -> tuple[Any, Any]:
        from keywatch.providers.clients import AdapterSet, make_http_client

        inventory = self.rt.inventory
        settings = settings_of(inventory.config)
        if self._for_inventory is not inventory:
            old = (self._adapters, self._http)
            # A usage page lists many buckets: more room than one probe answer, still a bound.
            self._http = make_http_client(8, settings.timeout, max(USAGE_MAX_BODY, inventory.config.probe.max_body))
            self._adapters = AdapterSet(self._http, inventory.accounts, timeout=settings.timeout,
                                        completion_model=inventory.config.probe.completion_model)
            self._for_inventory = inventory
            if old[0] is not None:
                self._closing = asyncio.ensure_future(_close(*old))
        return self._http, self._adapters

    async def close_clients(self) -> None:
        await _close(self._adapters, self._http)
        self._adapters = self._http = None

    def ensure_job(self) -> None:
        settings = settings_of(self.rt.inventory.config)
        keep_interval_job(self.rt.scheduler, JOB_ID, self.scheduled, settings.interval if settings.enabled else None)

    async def on_cycle(self, report: Any) -> None:
        self.ensure_job()

    async def scheduled(self) -> None:
        if not await self.rt.still_leading():
            log.info("usage_pull_skipped", reason="another instance leads")
            return
        try:
            await self.run()
        except NotLeader:  # leadership passed during the run: the new leader pulls and records
            log.info("usage_pull_stopped", reason="another instance leads")
        except Exception:
            log.exception("usage_run_failed")

    # -- one run ----------------------------------------------------------------------------------------
    async def run(self, now: datetime | None = None) -> Outcome:
        async with self._lock:
            now = now or datetime.now(UTC)
            results = await self.pull_all(now)
            statuses = await self.evaluate(now)
            await self.watch_anomalies(now)
            return Outcome(results, statuses)

    async def pull_all(self, now: datetime | None = None) -> dict[str, PullResult]:
        now = now or datetime.now(UTC)
        inventory = self.rt.inventory
        settings = settings_of(inventory.config)
        http, adapters = self._clients()
        try:
            known = await asyncio.to_thread(self.store.sources)
        except Exception as exc:
            log.error("usage_database_unavailable", error=type(exc).__name__)
            known = {}
        out: dict[str, PullResult] = {}
        for src in sources(inventory, settings):
            prev = known.get(src.name)
            fresh = prev is None or prev.last_success_at is None
            lookback = settings.initial_lookback if fresh else settings.lookback
            ctx = PullContext(http, now, now - timedelta(seconds=lookback), inventory.keys, adapters.get,
                              timeout=settings.timeout, key_ids=self.key_ids)
            try:
                result = await self._pull(ctx, src)
            except Exception as exc:
                log.exception("usage_pull_crashed", account=src.name, provider=src.provider)
                result = PullResult(src.name, src.provider, errors=[f"{type(exc).__name__}"])
            out[src.name] = result
            if result.period_totals:
                self.provider_totals[src.name] = result.period_totals
            for b in result.balances:
                self.snapshot.balances[(b.account, b.provider, b.currency)] = b.balance
            try:
                await asyncio.to_thread(self.store.apply, result, now)
            except NotLeader:
                raise
            except Exception as exc:
                log.error("usage_write_failed", account=src.name, error=type(exc).__name__)
                result.errors.append(f"database: {type(exc).__name__}")
                continue
            if result.errors:
                log.warning("usage_pull_failed", account=src.name, provider=src.provider, errors=result.errors)
            else:
                log.info("usage_pulled", account=src.name, provider=src.provider, rows=len(result.rows))
        try:
            views = await asyncio.to_thread(self.store.sources)
            self.snapshot.sources = {n: SourceView(s.provider, s.last_success_at, s.stale) for n, s in views.items()}
        except Exception:
            for name, r in out.items():
                old = self.snapshot.sources.get(name)
                self.snapshot.sources[name] = SourceView(r.provider, old.last_success_at if old else None, True)
        return out

    async def _pull(self, ctx: PullContext, src: Source) -> PullResult:
        if src.account is not None:
            collector = account_collector(src.provider)
            assert collector is not None  # sources() lists accounts of such providers only
            return await collector(ctx, src)
        if registry.info(src.provider).key_usage == "spend":
            return await keyreport.pull_spend(ctx, src)
        start = ctx.start.replace(hour=0, minute=0, second=0, microsecond=0)

        def history() -> list[Any]:
            before = [self.store.last_balance_before(src.name, c, start) for c in ("CNY", "USD")]
            return [b for b in before if b is not None] + self.store.balances(src.name, start)

        return await keyreport.pull_balance(ctx, src, await asyncio.to_thread(history))

    async def watch_anomalies(self, now: datetime) -> list[anomaly.Anomaly]:
        """Each key's recent hours against its own baseline (usage.anomaly): warning alerts and the
        usage_anomaly signal. The database being down keeps the last verdict."""
        inventory = self.rt.inventory
        threshold = settings_of(inventory.config).anomaly_threshold
        since = anomaly.hour_of(now) - timedelta(days=anomaly.BASELINE_DAYS + 1)
        try:
            aggs = await asyncio.to_thread(self.store.aggregate, since, None, anomaly.GROUP_BY)
        except Exception as exc:
            log.error("usage_database_unavailable", error=type(exc).__name__)
            return []
        names = [k.name for k in inventory.keys]

        def judge() -> list[anomaly.Anomaly]:
            series, first_seen = anomaly.series_from(aggs, names)
            return anomaly.detect(series, first_seen, now, threshold)

        found = await asyncio.to_thread(judge)  # thousands of keys: not on the event loop
        await self.anomalies.update(self.rt, found, now)
        return found

    # -- budgets ----------------------------------------------------------------------------------------
    async def evaluate(self, now: datetime | None = None) -> list[bmod.BudgetStatus]:
        """Figures and budgets from the database; alerts, signals and the snapshot from them."""
        now = now or datetime.now(UTC)
        inventory = self.rt.inventory
        settings = settings_of(inventory.config)
        budgets = budgets_of(inventory.config)
        totals = {k: v for per in self.provider_totals.values() for k, v in per.items()}
        starts = {p: bmod.period_bounds(p, now)[0] for p in bmod.PERIOD_NAMES}
        burn = timedelta(seconds=settings.burn_window)
        try:
            by_period = await asyncio.to_thread(
                lambda: {p: self.store.aggregate(s) for p, s in starts.items()}
            )
            series = await asyncio.to_thread(
                self.store.aggregate, now - burn - timedelta(days=1), None,
                ("account", "provider", "scope", "currency", "width", "bucket"),
            )
        except Exception as exc:
            log.error("usage_database_unavailable", error=type(exc).__name__)
            return self.snapshot.budgets
        self._key_figures(inventory, by_period, totals)
        grouped: dict[tuple[str, str, str], list[Any]] = {}
        for a in series:
            account, provider, scope, currency, width, bucket = a.group
            grouped.setdefault((account, provider, scope), []).append(
                (currency, bucket, bucket + WIDTHS[width], a.cost, a.has_cost, a.tokens))
        statuses = []
        for b in budgets:
            keys = bmod.covered_keys(b, inventory.keys)
            start, end = bmod.period_bounds(b.period, now)
            u = bmod.used(b, by_period[b.period], set(keys), totals)
            st = bmod.BudgetStatus(b.name, b.period, start, end, b.usd, b.tokens, u, bmod.ratio(b, u), keys)
            self._forecast(b, st, grouped, now, burn)
            statuses.append(st)
            await self._announce(b, st, now)
        self._signals(statuses)
        self.snapshot.budgets = statuses
        self.snapshot.at = now
        return statuses

    def _key_figures(self, inventory: Any, by_period: dict[str, list[Any]], totals: dict[Any, Decimal]) -> None:
        providers = {k.name: k.provider for k in inventory.keys}
        spend: dict[tuple[str, str, str], Decimal] = {}
        tokens: dict[tuple[str, str, str], int] = {}
        for period, aggs in by_period.items():
            label = bmod.PERIOD_NAMES[period]
            for a in aggs:
                scope, currency = a.group[2], a.group[3]
                name = scope[4:] if scope.startswith("key:") else None
                if name not in providers:
                    continue
                if currency == "USD" and a.has_cost:
                    slot = (name, providers[name], label)
                    spend[slot] = spend.get(slot, Decimal(0)) + a.cost
                if period == "monthly":
                    for d, n in (("input", a.input_tokens), ("output", a.output_tokens)):
                        tokens[(name, providers[name], d)] = tokens.get((name, providers[name], d), 0) + n
        for (scope, period), total in totals.items():
            name = scope[4:]
            if period in bmod.PERIOD_NAMES and name in providers:
                slot = (name, providers[name], bmod.PERIOD_NAMES[period])
                spend[slot] = max(spend.get(slot, Decimal(0)), total)
        for k in inventory.keys:
            for label in bmod.PERIOD_NAMES.values():
                if (k.name, k.provider, "month") in spend or (k.name, k.provider, "day") in spend:
                    spend.setdefault((k.name, k.provider, label), Decimal(0))
        self.snapshot.key_spend = spend
        self.snapshot.key_tokens = tokens

    def _forecast(self, b: BudgetConfig, st: bmod.BudgetStatus, series: dict[tuple[str, str, str], list[Any]],
                  now: datetime, burn: timedelta) -> None:
        keys = set(st.keys)
        money, toks = [], []
        for (account, provider, scope), items in series.items():
            if not bmod.matches(b, account, provider, scope, keys):
                continue
            for currency, bucket, end, cost, has_cost, tokens in items:
                if currency == "USD" and has_cost:
                    money.append((bucket, end, cost))
                toks.append((bucket, end, Decimal(tokens)))
        st.burn_usd_per_s = burn_rate(money, now, burn)
        st.burn_tokens_per_s = burn_rate(toks, now, burn)
        candidates = []
        if b.usd is not None:
            candidates.append(exhaustion(b.usd, st.used.usd, st.burn_usd_per_s, now))
        if b.tokens is not None:
            candidates.append(exhaustion(Decimal(b.tokens), Decimal(st.used.tokens), st.burn_tokens_per_s, now))
        found = [c for c in candidates if c is not None]
        at = min(found) if found else None
        st.exhaustion_at = at if at is not None and at < st.period_end else None

    async def _announce(self, b: BudgetConfig, st: bmod.BudgetStatus, now: datetime) -> None:
        previous = self.firing.get(b.name)
        if previous is not None and previous != st.period_start:
            await self._resolve(b, st, now)
        marks = await asyncio.to_thread(self.store.marks, b.name, st.period_start)
        threshold, new = bmod.crossed(b.thresholds, st.ratio, marks)
        forecast_due = (b.forecast and st.exhaustion_at is not None and not st.exhausted and "forecast" not in marks)
        if threshold is None and not forecast_due:
            return
        await asyncio.to_thread(self.store.add_marks, b.name, st.period_start,
                                new + (["forecast"] if forecast_due else []), now, st.ratio)
        what = self._figures_text(b, st)
        labels = {"budget": b.name, **(b.labels or {})}
        if threshold is not None:
            spent = threshold >= 100
            title = (f"Budget {b.name} is spent ({what})" if spent
                     else f"Budget {b.name} at {threshold}% of its {bmod.PERIOD_NAMES[b.period]}ly limit ({what})")
            summary = (f"{b.name}: {what} this {bmod.PERIOD_NAMES[b.period]} (period ends "
                       f"{st.period_end:%Y-%m-%d %H:%M} UTC)"
                       + (f"; keys marked {SIGNAL}: {', '.join(st.keys)}" if spent and st.keys else ""))
            await self._emit(Alert(
                identity=f"budget:{b.name}", severity=Severity.CRITICAL if spent else Severity.WARNING, firing=True,
                title=title, summary=summary, at=now, labels=labels,
                fields={"budget": b.name, "threshold": f"{threshold}%", "used_ratio": f"{st.ratio:.4f}",
                        "period": b.period, "period_start": st.period_start.isoformat()},
            ))
            self.firing[b.name] = st.period_start
            self.rt.events.record(Event(now, "budget_threshold", None, "keywatch", title,
                                     {"budget": b.name, "threshold": threshold, "ratio": str(st.ratio),
                                      "period_start": st.period_start.isoformat()}))
        if forecast_due and st.exhaustion_at is not None:
            eta = human(st.exhaustion_at - now)
            title = f"At this rate budget {b.name} runs out in {eta}"
            await self._emit(Alert(
                identity=f"budget_forecast:{b.name}", severity=Severity.WARNING, firing=True, title=title,
                summary=f"{title}, at {st.exhaustion_at:%Y-%m-%d %H:%M} UTC, before its period ends "
                        f"({st.period_end:%Y-%m-%d %H:%M} UTC); {what}",
                at=now, labels=labels,
                fields={"budget": b.name, "exhaustion_at": st.exhaustion_at.isoformat(), "period": b.period},
            ))
            self.firing[b.name] = st.period_start
            self.rt.events.record(Event(now, "budget_forecast", None, "keywatch", title,
                                     {"budget": b.name, "exhaustion_at": st.exhaustion_at.isoformat()}))

    async def _resolve(self, b: BudgetConfig, st: bmod.BudgetStatus, now: datetime) -> None:
        for identity in (f"budget:{b.name}", f"budget_forecast:{b.name}"):
            await self._emit(Alert(identity=identity, severity=Severity.INFO, firing=False,
                                   title=f"Budget {b.name}: a new {bmod.PERIOD_NAMES[b.period]} has started",
                                   summary=f"{b.name} starts again from {self._figures_text(b, st)}", at=now,
                                   labels={"budget": b.name}))
        self.firing.pop(b.name, None)

    @staticmethod
    def _figures_text(b: BudgetConfig, st: bmod.BudgetStatus) -> str:
        parts = []
        if b.usd is not None:
            parts.append(f"${usd_text(st.used.usd)} of ${usd_text(b.usd)}")
        if b.tokens is not None:
            parts.append(f"{st.used.tokens:,} of {b.tokens:,} tokens")
        return ", ".join(parts)

    async def _emit(self, alert: Alert) -> None:
        await self.rt.emit_alert(alert)

    def _signals(self, statuses: list[bmod.BudgetStatus]) -> None:
        self.flagged = {k for st in statuses if st.exhausted for k in st.keys}
        self.rt.board.set(Signal.BUDGET_EXHAUSTED, self.flagged)

    async def aclose(self) -> None:
        scheduler = self.rt.scheduler
        if scheduler is not None and scheduler.get_job(JOB_ID) is not None:
            scheduler.remove_job(JOB_ID)
        await self.close_clients()


async def _close(adapters: Any, http: Any) -> None:
    try:
        if adapters is not None:
            await adapters.aclose()
        if http is not None:
            await http.aclose()
    except Exception as exc:
        log.warning("usage_client_close_failed", error=type(exc).__name__)


# -- the capability ------------------------------------------------------------------------------------------
async def setup(rt: Runtime) -> UsageService:
    config = rt.inventory.config
    # Budgets naming unknown keys or accounts are refused when the config is loaded (settings schema).
    service = UsageService(rt, UsageStore(rt.store.engine))
    try:
        views = await asyncio.to_thread(service.store.sources)
        service.snapshot.sources = {n: SourceView(s.provider, s.last_success_at, s.stale) for n, s in views.items()}
    except Exception as exc:
        log.warning("usage_database_unavailable", error=type(exc).__name__)
    rt.registry.register(UsageCollector(lambda: service.snapshot))
    rt.on_cycle("usage", service.on_cycle)
    # The scheduler is created after the capabilities: the job is added by the first cycle's hook.
    service.ensure_job()
    log.info("usage_ready", sources=[s.name for s in sources(rt.inventory, settings_of(config))],
             budgets=[b.name for b in budgets_of(config)])
    return service
