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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from keywatch.domain import Alert, Event, Secret, Severity
from keywatch.engine import immediate
from keywatch.leaks.config import LeaksSettings, reference_problem, secret_references
from keywatch.leaks.containment import Containment, Exposure
from keywatch.leaks.github import GithubError, PublicKeys, fetch_alert
from keywatch.leaks.intake import Incoming, KeyIndex, clean_location
from keywatch.leaks.metrics import LeakMetrics
from keywatch.leaks.receivers import generic, github_partner, github_webhook, guarded
from keywatch.leaks.signals import ProviderSignals
from keywatch.leaks.store import LeakReport, LeakStore, receive_in, save_report_in
from keywatch.redact import REGISTRY
from keywatch.runtime import SOLO, CycleReport, Runtime

log = structlog.get_logger("keywatch.leaks")
PRUNE_EVERY = timedelta(hours=1)
# How often the leader looks for reports other instances recorded. A poll, not LISTEN/NOTIFY: it works on
# SQLite and PostgreSQL alike, survives a dropped connection without re-subscribing, and the same query takes
# up the reports of a process killed before it handled them; an indexed read of a few rows a second.
QUEUE_POLL = 1.0
GITHUB_CONNECTIONS = 32


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
        self._inflight: set[str] = set()  # reports this process is handling (the queue poll leaves them)
        self._pruned_at: datetime | None = None
        self.acting = False  # this instance leads and contains; a follower only records (state `queued`)
        self.served = False  # the receivers are served by `serve` (every instance), not by the capability
        self._poller: asyncio.Task[None] | None = None

    # -- set-up ---------------------------------------------------------------------------------------
    def mount(self) -> None:
        from keywatch.providers.clients import make_http_client

        s = _settings(self.rt)
        probe = self.rt.inventory.config.probe
        if s.github is not None or s.partner is not None:
            # GitHub alerts are fetched as their webhooks arrive: a burst of them must not queue on a few
            # connections (the fetch is on the way to the provider call).
            self._http = make_http_client(GITHUB_CONNECTIONS, probe.timeout, probe.max_body)
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

    async def lead(self) -> None:
        """This instance acts: containment from here on, and the reports others recorded (or this process
        recorded and was killed before handling) are taken up at once and every `QUEUE_POLL` after."""
        await self.containment.load()
        immediate.attach_exposure(self.found)
        self.rt.on_cycle("leaks", self.on_cycle)
        self.acting = True
        self._poller = asyncio.get_running_loop().create_task(self._poll_queue())

    async def step_down(self) -> None:
        """No longer acting (the lead lost, shutdown): the receivers stay up and only record."""
        self.acting = False
        immediate.attach_exposure(None)
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fetching.clear()
        self._inflight.clear()

    async def aclose(self) -> None:
        """The capability's close: it steps down; the receivers close with the process when `serve`
        mounted them (`close`)."""
        await self.step_down()
        if not self.served:
            await self.close()

    async def close(self) -> None:
        for p in self._paths:
            self.rt.routes.unmount(p)
        self._paths.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

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
        """Record one report (durably, before the receiver answers) and, where this instance acts, handle it:
        a matched key is contained in the background, an unmatched secret announced. A follower records the
        report `queued`; the leader takes it up (`take_queued`)."""
        key = self.index().match(item)
        now = self.rt.clock()
        report = LeakReport(
            id=report_id or uuid.uuid4().hex,
            received_at=now,
            source=item.source,
            state="queued" if key or not self.acting else "unmatched",
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
        if not self.acting:
            await asyncio.to_thread(self.store.save_report, report)
            return key
        if key is None:
            await asyncio.to_thread(self.store.save_report, report)
            await self._unmanaged(item, report)
            return None
        # Containment starts at once, beside the report's write (which still ends before the answer); the
        # report is written `queued` and becomes `matched` with the compromise mark, in one transaction.
        self._inflight.add(report.id)
        if report_id is not None:  # its row exists (pending): written once, matched, with the mark
            self._contain_report(report, received, None)
            return key
        written = asyncio.ensure_future(self.containment.writes.run(partial(save_report_in, r=report)))
        self._contain_report(report, received, written)
        await written
        return key

    def _contain_report(self, report: LeakReport, received: float, written: asyncio.Future[Any] | None) -> None:
        assert report.key is not None
        exposure = Exposure(
            report.key,
            report.source,
            report.location,
            report.confidence,
            report.id,
            received,
            report.validity,
            report.publicly_leaked,
            fingerprints=tuple(report.detail.get("fingerprints", ())),
            row=replace(report, state="matched"),
            written=written,
        )
        reported = Event(
            report.received_at,
            "leak_reported",
            report.key,
            "leaks",
            f"{report.key} reported exposed by {report.source} at {report.location}",
            {
                "source": report.source,
                "report": report.id,
                "confidence": report.confidence,
                "validity": report.validity,
            },
        )
        self.spawn(self._contain(exposure, reported))

    async def _contain(self, e: Exposure, reported: Event) -> None:
        """Contain, then the audit line of the report: after the provider call, which it must not delay."""
        try:
            await self.containment.contain(e)
        finally:
            if e.report is not None:
                self._inflight.discard(e.report)
            await self.rt.events.write(reported)

    async def take_queued(self) -> int:
        """Handle the reports recorded `queued` and not handled here: by a follower, or by this process
        before it was killed. Returns how many were taken up."""
        rows = await asyncio.to_thread(self.store.queued, 100)
        taken = 0
        for r in rows:
            if r.id in self._inflight or r.id in self._fetching:
                continue
            at = r.received_at if r.received_at.tzinfo is not None else r.received_at.replace(tzinfo=UTC)
            received = time.monotonic() - max(0.0, (self.rt.clock() - at).total_seconds())
            if r.key is not None:
                self._inflight.add(r.id)
                self._contain_report(r, received, None)
            elif r.source == "github" and "repo" in r.detail:  # a webhook: its secret is fetched from here
                if not await asyncio.to_thread(self.store.claim, r.id, "pending"):
                    continue
                self._fetching.add(r.id)
                self.spawn(self._fetch_and_process(replace(r, state="pending"), received))
            else:
                if not await asyncio.to_thread(self.store.claim, r.id, "unmatched"):
                    continue
                item = Incoming(
                    r.source, r.location, fingerprint=r.fingerprint, secret_type=r.secret_type, masked_as=r.masked
                )
                await self._unmanaged(item, r)
            taken += 1
        return taken

    async def _poll_queue(self) -> None:
        """At the lead's start, then every QUEUE_POLL while others may record (a cluster)."""
        while True:
            try:
                if await self.take_queued():
                    log.info("leak_reports_taken_up")
            except Exception as exc:
                log.warning("leak_reports_unavailable", error=type(exc).__name__)
            if self.rt.leadership is SOLO:
                return  # alone: nothing but this process records reports
            await asyncio.sleep(QUEUE_POLL)

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
            "pending" if self.acting else "queued",  # a follower's: the leader fetches it
            "exact",
            clean_location(f"{repo} alert #{number}"),
            delivery=delivery,
            secret_type=_s(alert.get("secret_type"), 120),
            url=_url(alert.get("html_url")),
            validity=_s(alert.get("validity"), 16),
            publicly_leaked=alert.get("publicly_leaked") if isinstance(alert.get("publicly_leaked"), bool) else None,
            detail={"alert": ref, "repo": repo, "number": number},
        )
        try:  # with the other deliveries of a burst, in one transaction (a replay fails alone)
            await self.containment.writes.run(partial(receive_in, source="github", delivery=delivery, report=report))
        except IntegrityError:
            return None
        if not self.acting:
            return f"alert {ref} recorded"
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


_SERVED: dict[int, LeakService] = {}  # by id(runtime): the receivers `serve` mounted in this process


async def _service(rt: Runtime) -> LeakService:
    s = _settings(rt)
    return LeakService(rt, LeakStore(rt.store.engine), LeakMetrics(rt.registry), await _resolve(rt, s))


class Served:
    """The receivers as every instance serves them (extensions.EVERY_INSTANCE)."""

    def __init__(self, svc: LeakService) -> None:
        self.svc = svc

    async def aclose(self) -> None:
        _SERVED.pop(id(self.svc.rt), None)
        await self.svc.step_down()
        await self.svc.close()


async def serve(rt: Runtime) -> Served:
    """Every instance, from start to shutdown: the receivers verify and record; they contain only while the
    `leaks` capability (the leader's) acts through them."""
    svc = await _service(rt)
    svc.served = True
    svc.mount()
    _SERVED[id(rt)] = svc
    return Served(svc)


async def setup(rt: Runtime) -> LeakService:
    svc = _SERVED.get(id(rt))
    if svc is None:  # no `serve` in this process (a runtime built without the daemon): mount them here
        svc = await _service(rt)
        svc.mount()
    await svc.lead()
    return svc
