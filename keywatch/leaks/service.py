"""The leak capability: the receivers on the daemon's HTTP server, the intake that records and matches each
report, containment of matched keys, and the provider-side signals (AWS quarantine) turned into the same.

A report is written to the database before its receiver answers, so a restart loses none: reports still
pending at start (a GitHub alert whose secret was not fetched yet) are taken up again. Matched keys are
contained in the background (containment.py); unmatched secrets are recorded as unmanaged leaks, masked,
and alerted at warning severity.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from keywatch.domain import Alert, Event, Secret, Severity
from keywatch.engine import immediate
from keywatch.leaks.config import LeaksSettings, reference_problem, secret_references
from keywatch.leaks.containment import Containment, Exposure
from keywatch.leaks.github import GithubError, PublicKeys, fetch_alert
from keywatch.leaks.intake import Incoming, KeyIndex, clean_location
from keywatch.leaks.metrics import LeakMetrics
from keywatch.leaks.receivers import generic, github_partner, github_webhook, guarded
from keywatch.leaks.signals import ProviderSignals
from keywatch.leaks.store import LeakReport, LeakStore
from keywatch.redact import REGISTRY
from keywatch.runtime import CycleReport, Runtime

log = structlog.get_logger("keywatch.leaks")
PRUNE_EVERY = timedelta(hours=1)


@dataclass
class Resolved:
    """The receivers' secrets, resolved at setup."""

    github_secret: Secret | None = None
    github_token: Secret | None = None
    generic_token: Secret | None = None
    generic_hmac: Secret | None = None


def _settings(rt: Runtime) -> LeaksSettings:
    return rt.inventory.config.leaks


async def _resolve(rt: Runtime, s: LeaksSettings) -> Resolved:
    """The receivers' secrets; one that cannot be read refuses the start, naming the field (as a key's
    secret does), and never runs a receiver without its secret."""
    from keywatch.settings.loader import ConfigError
    from keywatch.settings.secrets import SecretError, resolve

    cfg = rt.inventory.config
    allow = cfg.daemon.allow_literal_secrets
    problems: list[str] = []

    async def one(ref: str, where: str) -> Secret | None:
        try:
            return await asyncio.to_thread(resolve, ref, allow_literal=allow, stores=cfg.secret_stores)
        except SecretError as exc:
            problems.append(reference_problem(where, ref, exc))
            return None

    found = {where: await one(ref, where) for where, ref in secret_references(s)}
    out = Resolved(
        github_secret=found.get("leaks.github.webhook_secret"),
        github_token=found.get("leaks.github.token"),
        generic_token=found.get("leaks.generic.token"),
        generic_hmac=found.get("leaks.generic.hmac_secret"),
    )
    if problems:
        raise ConfigError(rt.inventory.source, problems)
    REGISTRY.add(x.reveal() for x in vars(out).values() if x is not None)
    return out


class LeakService:
    def __init__(self, rt: Runtime, store: LeakStore, metrics: LeakMetrics, secrets: Resolved) -> None:
        self.rt = rt
        self.store = store
        self.metrics = metrics
        self.secrets = secrets
        self.containment = Containment(rt, store, metrics, lambda: _settings(rt))
        self.signals = ProviderSignals(rt, self)
        self._index: tuple[int, KeyIndex] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._paths: list[str] = []
        self._http: Any = None
        self._fetching: set[str] = set()  # pending reports whose fetch is under way
        self._pruned_at: datetime | None = None

    # -- set-up ---------------------------------------------------------------------------------------
    def mount(self) -> None:
        from keywatch.providers.clients import make_http_client

        s = _settings(self.rt)
        probe = self.rt.inventory.config.probe
        if s.github is not None or s.partner is not None:
            self._http = make_http_client(4, probe.timeout, probe.max_body)
        if s.github is not None and self.secrets.github_secret is not None:
            self._mount(s.github.path, "github", github_webhook(self, self.secrets.github_secret, s.max_body))
        if s.partner is not None:
            p = s.partner
            keys = PublicKeys(
                self._http,
                p.public_keys_url,
                float(p.keys_cache),
                {k.key_identifier: k.key for k in p.public_keys},
                self.secrets.github_token,
            )
            self._mount(p.path, "github_partner", github_partner(self, keys, s.max_body))
        if s.generic is not None:
            self._mount(
                s.generic.path,
                "generic",
                generic(self, self.secrets.generic_token, self.secrets.generic_hmac, s.max_body),
            )

    def _mount(self, path: str, name: str, handler: Any) -> None:
        self.rt.routes.mount(path, guarded(name, self, handler))
        self._paths.append(path)
        log.info("leak_receiver_ready", receiver=name, path=path)

    async def aclose(self) -> None:
        immediate.attach_exposure(None)
        for p in self._paths:
            self.rt.routes.unmount(p)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every background containment and fetch is done (tests, benchmarks, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- what the receivers call (receivers.Intake) ----------------------------------------------------
    def refused(self, receiver: str, status: int) -> None:
        self.metrics.refused.labels(receiver, str(status)).inc()

    def index(self) -> KeyIndex:
        inventory = self.rt.inventory
        if self._index is None or self._index[0] != id(inventory):
            self._index = (id(inventory), KeyIndex(inventory.keys))
        return self._index[1]

    async def submit(self, items: list[Incoming]) -> list[str | None]:
        """Record and match each report; matched keys are contained in the background. Returns the matched
        key names (None for unmatched)."""
        out = []
        for item in items:
            out.append(await self.process(item, time.monotonic()))
        return out

    async def process(self, item: Incoming, received: float, report_id: str | None = None) -> str | None:
        key = self.index().match(item)
        now = self.rt.clock()
        report = LeakReport(
            id=report_id or uuid.uuid4().hex,
            received_at=now,
            source=item.source,
            state="matched" if key else "unmatched",
            confidence=item.confidence,
            location=item.location,
            delivery=item.delivery,
            key=key,
            fingerprint=item.shown_fingerprint,
            masked=item.masked,
            secret_type=item.secret_type,
            url=item.url,
            validity=item.validity,
            publicly_leaked=item.publicly_leaked,
            detail=item.detail,
        )
        self.metrics.reports.labels(item.source, "true" if key else "false").inc()
        if key is None:
            await asyncio.to_thread(self.store.save_report, report)
            await self._unmanaged(item, report)
            return None
        # Containment starts at once, beside the report's write (which still ends before the answer).
        exposure = Exposure(
            key,
            item.source,
            item.location,
            item.confidence,
            report.id,
            received,
            item.validity,
            item.publicly_leaked,
            fingerprints=tuple(item.detail.get("fingerprints", ())),
        )
        self.spawn(self.containment.contain(exposure))
        if report_id is None:
            await asyncio.to_thread(self.store.save_report, report)
        else:  # its row exists already (pending): the update need not hold anything up
            self.spawn(asyncio.to_thread(self.store.save_report, report))
        self.spawn(
            self.rt.events.write(
                Event(
                    now,
                    "leak_reported",
                    key,
                    "leaks",
                    f"{key} reported exposed by {item.source} at {item.location}",
                    {
                        "source": item.source,
                        "report": report.id,
                        "confidence": item.confidence,
                        "validity": item.validity,
                    },
                )
            )
        )
        return key

    async def found(self, items: list[Incoming]) -> None:
        """Reports another capability matched itself (the scheduled scan): recorded and contained as the
        receivers' are (engine.immediate.report_exposed)."""
        for item in items:
            try:
                await self.process(item, time.monotonic())
            except Exception:
                log.exception("leak_report_failed", source=item.source)

    async def _unmanaged(self, item: Incoming, report: LeakReport) -> None:
        shown = item.masked or item.shown_fingerprint or "a secret"
        what = f" ({item.secret_type})" if item.secret_type else ""
        await self.rt.events.write(
            Event(
                report.received_at,
                "leak_unmanaged",
                None,
                "leaks",
                f"unmanaged leak: {shown}{what} at {item.location} (not a key keywatch manages)",
                {"source": item.source, "report": report.id, "fingerprint": item.shown_fingerprint},
            )
        )
        if item.prematched:  # the scan raises (and resolves, once no longer found) a warning of its own
            return
        await self.rt.emit_alert(
            Alert(
                identity=f"leak_unmanaged:{item.shown_fingerprint or report.id}",
                severity=Severity.WARNING,
                firing=True,
                title=f"unmanaged key exposed: {shown}{what}",
                summary=f"{item.source} found {shown} at {item.location}; keywatch does not manage it: revoke it "
                "where it was issued",
                at=report.received_at,
                fields={
                    "kind": "leak_unmanaged",
                    "source": item.source,
                    "location": item.location,
                    "fingerprint": item.shown_fingerprint or "",
                    "masked": item.masked or "",
                },
            )
        )

    # -- GitHub webhooks ------------------------------------------------------------------------------
    async def github_alert(self, delivery: str, action: str, payload: dict[str, Any]) -> str | None:
        """Record the delivery (None when it is a replay) and what it says."""
        alert, repo = payload["alert"], payload["repository"]["full_name"]
        number = alert["number"]
        ref = f"{repo}#{number}"
        now = self.rt.clock()
        if action == "resolved":
            resolution = alert.get("resolution") if isinstance(alert.get("resolution"), str) else None
            fresh = await asyncio.to_thread(
                self.store.receive,
                "github",
                delivery,
                LeakReport(
                    uuid.uuid4().hex,
                    now,
                    "github",
                    "resolved",
                    "exact",
                    clean_location(f"{repo} alert #{number}"),
                    delivery=delivery,
                    resolution=(resolution or "")[:64] or None,
                    detail={"alert": ref},
                ),
            )
            if not fresh:
                return None
            await self.rt.events.write(
                Event(
                    now,
                    "leak_resolved",
                    None,
                    "leaks",
                    f"GitHub alert {ref} resolved ({resolution or 'no resolution'}); nothing is re-enabled by it",
                    {"alert": ref},
                )
            )
            return f"alert {ref} resolution recorded (nothing is re-enabled)"
        if action not in ("created", "reopened", "validated", "publicly_leaked"):
            if not await asyncio.to_thread(self.store.receive, "github", delivery, None):
                return None
            return f"action {action[:40]} ignored"
        report = LeakReport(
            uuid.uuid4().hex,
            now,
            "github",
            "pending",
            "exact",
            clean_location(f"{repo} alert #{number}"),
            delivery=delivery,
            secret_type=_s(alert.get("secret_type"), 120),
            url=_url(alert.get("html_url")),
            validity=_s(alert.get("validity"), 16),
            publicly_leaked=alert.get("publicly_leaked") if isinstance(alert.get("publicly_leaked"), bool) else None,
            detail={"alert": ref, "repo": repo, "number": number},
        )
        if not await asyncio.to_thread(self.store.receive, "github", delivery, report):
            return None
        self._fetching.add(report.id)
        self.spawn(self._fetch_and_process(report, time.monotonic()))
        return f"alert {ref} recorded"

    async def _fetch_and_process(self, report: LeakReport, received: float) -> None:
        try:
            await self._fetch_one(report, received)
        finally:
            self._fetching.discard(report.id)

    async def _fetch_one(self, report: LeakReport, received: float) -> None:
        gh = _settings(self.rt).github
        token = self.secrets.github_token
        repo, number = report.detail["repo"], report.detail["number"]
        if gh is None or token is None or self._http is None:
            await asyncio.to_thread(
                self.store.update_report,
                report.id,
                state="unmatched",
                detail={**report.detail, "why": "no leaks.github.token to fetch the secret"},
            )
            self.metrics.reports.labels("github", "false").inc()
            await self._unmanaged(Incoming("github", report.location, secret_type=report.secret_type), report)
            return
        try:
            data = await fetch_alert(self._http, gh.api_url, token, repo, number)
        except GithubError as exc:
            if exc.status == 404:  # no such alert (or not visible to the token): nothing to fetch, ever
                await asyncio.to_thread(
                    self.store.update_report,
                    report.id,
                    state="unmatched",
                    detail={**report.detail, "why": "GitHub has no such alert (HTTP 404)"},
                )
                log.warning("github_alert_not_found", alert=report.detail["alert"])
                return
            # kept pending: taken up again at the next cycle
            log.warning("github_alert_fetch_failed", alert=report.detail["alert"], error=str(exc))
            return
        value = data.get("secret")
        if not isinstance(value, str) or not value:
            await asyncio.to_thread(
                self.store.update_report,
                report.id,
                state="unmatched",
                detail={**report.detail, "why": "the alert carries no secret"},
            )
            return
        secret = Secret(value)
        first = data.get("first_location_detected") if isinstance(data.get("first_location_detected"), dict) else {}
        where = f"{repo}"
        if isinstance(first.get("path"), str):
            where += f" {first['path']}"
            if isinstance(first.get("start_line"), int):
                where += f":{first['start_line']}"
            if isinstance(first.get("commit_sha"), str):
                where += f" @ {first['commit_sha'][:12]}"
        where += f" (alert #{number})"
        validity = _s(data.get("validity"), 16) or report.validity
        leaked = data.get("publicly_leaked")
        leaked = leaked if isinstance(leaked, bool) else report.publicly_leaked
        await self.process(
            Incoming(
                "github",
                clean_location(where, [value]),
                secret=secret,
                delivery=report.delivery,
                secret_type=report.secret_type,
                url=report.url,
                validity=validity,
                publicly_leaked=leaked,
                detail=report.detail,
            ),
            received,
            report.id,
        )

    # -- the cycle -------------------------------------------------------------------------------------
    async def on_cycle(self, report: CycleReport) -> None:
        await self.containment.load()  # a `keywatch enable --compromised-ok` clears a mark from outside
        await self.signals.on_cycle(report)
        await self.containment.retry_uncontained()
        now = self.rt.clock()
        try:
            pending = await asyncio.to_thread(self.store.reports, None, "pending", 100)
        except Exception as exc:
            log.warning("leak_reports_unavailable", error=type(exc).__name__)
            return
        for r in pending:
            if r.source == "github" and "repo" in r.detail and r.id not in self._fetching:
                self._fetching.add(r.id)
                self.spawn(self._fetch_and_process(r, time.monotonic()))
        # Old delivery ids are forgotten once an hour, not every cycle: a write each cycle would make every
        # cycle wait on a database another process holds locked.
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        keep = timedelta(seconds=float(_settings(self.rt).forget_deliveries_after))
        try:
            await asyncio.to_thread(self.store.forget_deliveries, now - keep)
        except Exception as exc:
            log.warning("leak_deliveries_prune_failed", error=type(exc).__name__)

    async def provider_exposure(self, key: str, source: str, location: str) -> None:
        """A provider says the key is exposed (AWS quarantine, Health event, a key gone or changed there)."""
        if (c := self.containment.compromised.get(key)) is not None and c.active:
            return
        item = Incoming(source, clean_location(location), confidence="provider")
        now = self.rt.clock()
        report = LeakReport(uuid.uuid4().hex, now, source, "matched", "provider", item.location, key=key)
        try:
            await asyncio.to_thread(self.store.save_report, report)
        except Exception as exc:
            log.warning("leak_report_write_failed", error=type(exc).__name__)
        self.metrics.reports.labels(source, "true").inc()
        await self.containment.contain(Exposure(key, source, item.location, "provider", report.id, time.monotonic()))


def _s(v: Any, limit: int) -> str | None:
    return v[:limit] if isinstance(v, str) and v else None


def _url(v: Any) -> str | None:
    return clean_location(v)[:500] if isinstance(v, str) and v.startswith("https://") else None


async def setup(rt: Runtime) -> LeakService:
    s = _settings(rt)
    store = LeakStore(rt.store.engine)
    svc = LeakService(rt, store, LeakMetrics(rt.registry), await _resolve(rt, s))
    await svc.containment.load()
    immediate.attach_exposure(svc.found)
    svc.mount()
    rt.on_cycle("leaks", svc.on_cycle)
    return svc
