"""Scheduled scans of the `[scan]` paths inside the daemon (listed in keywatch.extensions).

A scheduler job (`leak_scan`, every `[scan] interval`, first run at start) scans the configured paths with
the same scanner as `keywatch scan`, in a worker thread. A managed key found there is exposed: it is
handed to the leak capability (engine.immediate.report_exposed), which records a leak report (source
`scan`) and contains the key at once, as for a receiver's report: deactivated at the provider, out of every
pool, rotated where it can be, a critical alert naming the key and where it was found. Without the leak
capability in the process, and for account credentials (nothing to deactivate), the key joins the
`compromised` signal on the board for the next cycle and a critical alert `leak_scan:<owner>` says where.
Each secret is reported once; the alerts still firing after a restart tell the capability what it had
reported. An unmanaged provider key is recorded as an unmanaged leak and raises a warning per fingerprint,
resolved when it is no longer found. A path that is missing or unreadable is logged and skipped; the scan
goes on.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from keywatch.domain import Alert, Event, Severity, Signal
from keywatch.engine import immediate
from keywatch.leaks.intake import Incoming, clean_location
from keywatch.leaks.scan_config import ScanSettings
from keywatch.leaks.scanner import Finding, Scanner, ScanReport, SecretMatcher, managed_secrets, toplevel
from keywatch.runtime import Runtime, keep_interval_job

log = structlog.get_logger("keywatch.leaks.scan")
JOB_ID = "leak_scan"


def settings_of(config: Any) -> ScanSettings:
    return getattr(config, "scan", None) or ScanSettings()


def key_fingerprints(k: Any) -> set[str]:
    """The fingerprints of a managed key's secret and its companions (an IAM access key id)."""
    out = {s.fingerprint for s in k.extra_secrets.values()}
    if k.secret is not None:
        out.add(k.secret.fingerprint)
    return out


def where(f: Finding) -> str:
    return f"{f.path}:{f.line}" + (f" (commit {f.commit[:12]})" if f.commit else "")


def incoming(key: str | None, items: list[Finding], fps: set[str]) -> Incoming:
    """What the scan found, as a leak report: matched by the scanner (the secret itself, so exact), where
    (`path:line`, the commit for git history; the first five places)."""
    first = items[0]
    places = ", ".join(where(f) for f in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return Incoming(
        "scan",
        clean_location(places),
        fingerprint=first.fingerprint,
        confidence="exact" if key else "pattern",
        secret_type=first.rule if key is None else None,
        detail={
            "where": [{"path": f.path, "line": f.line, "commit": f.commit} for f in items[:20]],
            "fingerprints": sorted(fps),
        },
        prematched=True,
        key=key,
        masked_as=first.masked,
    )


def scan(matcher: SecretMatcher, settings: ScanSettings) -> ScanReport:
    """One scan of every configured path (blocking: run it in a thread)."""
    scanner = Scanner(matcher, max_size=settings.max_size)
    report = ScanReport()
    repos: set[str] = set()
    for p in map(Path, settings.paths):
        if not p.exists():
            report.notes.append(f"{p}: no such file or directory")
            continue
        report.merge(scanner.scan_paths([p]))
        if settings.git_history:
            top = toplevel(p)
            if top is None:
                report.notes.append(f"{p}: not in a git repository; history not scanned")
            elif top not in repos:
                repos.add(top)
                report.merge(scanner.scan_git(p))
    return report


class ScanService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.exposed: dict[str, set[str]] = {}  # key (or account:NAME) -> fingerprints of its secrets found
        self.unmanaged: set[str] = set()  # fingerprints of the unmanaged keys of the last scan
        self.handed: set[str] = set()  # keys whose findings went to containment (it holds the mark)
        self._restored = False
        self.last: ScanReport | None = None
        self._matcher: tuple[Any, SecretMatcher] | None = None
        self._lock = asyncio.Lock()

    def matcher(self) -> SecretMatcher:
        inventory = self.rt.inventory
        if self._matcher is None or self._matcher[0] is not inventory:
            self._matcher = (inventory, SecretMatcher(managed_secrets(inventory)))
        return self._matcher[1]

    def ensure_job(self) -> None:
        settings = settings_of(self.rt.inventory.config)
        keep_interval_job(self.rt.scheduler, JOB_ID, self.scheduled, settings.interval if settings.paths else None)

    async def on_cycle(self, report: Any) -> None:
        self.ensure_job()

    async def scheduled(self) -> None:
        try:
            await self.run()
        except Exception:
            log.exception("leak_scan_failed")

    async def run(self, now: datetime | None = None) -> ScanReport:
        async with self._lock:
            now = now or self.rt.clock()
            settings = settings_of(self.rt.inventory.config)
            matcher = await asyncio.to_thread(self.matcher)  # 10,000 secrets take a while to index
            report = await asyncio.to_thread(scan, matcher, settings)
            for n in report.notes:
                log.warning("leak_scan_note", note=n)
            for s in report.skipped:
                log.info("leak_scan_skipped", path=s.path, commit=s.commit, reason=s.reason)
            await self._managed([f for f in report.findings if f.managed], now)
            await self._unmanaged([f for f in report.findings if not f.managed], now)
            log.info(
                "leak_scan_done",
                files=report.files,
                blobs=report.blobs,
                bytes=report.bytes,
                findings=len(report.findings),
                skipped=len(report.skipped),
            )
            self.last = report
            return report

    def _restore(self) -> None:
        """What the alerts still firing (the pipeline keeps them across restarts) say this capability raised,
        or had contained."""
        if self._restored:
            return
        self._restored = True
        for a in self.rt.alerts.firing():
            fps = a.fields.get("fingerprints")
            if a.identity.startswith("leak_scan:") and fps:
                self.exposed.setdefault(a.identity.removeprefix("leak_scan:"), set()).update(fps.split(","))
            elif a.identity.startswith("compromised:") and a.fields.get("source") == "scan" and fps:
                owner = a.identity.removeprefix("compromised:")
                self.exposed.setdefault(owner, set()).update(fps.split(","))
                self.handed.add(owner)
            elif a.identity.startswith("leak_scan_unmanaged:"):
                self.unmanaged.add(a.identity.removeprefix("leak_scan_unmanaged:"))

    def _raise(self) -> None:
        """The keys whose current secret (or a companion) was found, and that containment did not take:
        onto the board's compromised set. A key whose secret changed since (rotated) no longer carries it;
        nothing else takes it away."""
        current = {k.name: key_fingerprints(k) for k in self.rt.inventory.keys}
        active = {k for k, fps in self.exposed.items() if k not in self.handed and fps & current.get(k, set())}
        self.rt.board.set(Signal.COMPROMISED, active, by="leak_scan")

    async def _managed(self, findings: list[Finding], now: datetime) -> None:
        self._restore()
        by_owner: dict[str, list[Finding]] = {}
        for f in findings:
            by_owner.setdefault(f.key or "", []).append(f)
        providers = {k.name: k.provider for k in self.rt.inventory.keys}
        reports: list[tuple[str, Incoming]] = []
        for owner, items in sorted(by_owner.items()):
            fps = {f.fingerprint for f in items}
            known = self.exposed.setdefault(owner, set())
            if fps <= known:
                continue  # already raised: the alert is firing, the signal set
            known |= fps
            if owner in providers and immediate.exposure_attached():
                reports.append((owner, incoming(owner, items, known)))
            else:
                await self._announce(owner, items, known, providers.get(owner), now)
        if reports and await immediate.report_exposed([r for _, r in reports]):
            self.handed.update(owner for owner, _ in reports)
        else:
            for owner, _ in reports:  # the leak capability went away meanwhile: the next cycle contains them
                items = by_owner[owner]
                await self._announce(owner, items, self.exposed[owner], providers.get(owner), now)
        self._raise()

    async def _announce(
        self, owner: str, items: list[Finding], fps: set[str], provider: str | None, now: datetime
    ) -> None:
        places = ", ".join(where(f) for f in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        account = owner.startswith("account:")
        first = items[0]
        what = f"credentials of {owner}" if account else f"key {owner}"
        title = f"{what} found exposed" if account else f"{owner} found exposed in {first.path}"
        summary = f"the {what} ({first.masked}, {first.fingerprint}) was found by the scheduled scan in {places}"
        await self.rt.emit_alert(
            Alert(
                identity=f"leak_scan:{owner}",
                severity=Severity.CRITICAL,
                firing=True,
                title=title,
                summary=summary,
                at=now,
                key=None if account else owner,
                provider=provider or first.provider,
                fields={
                    "kind": "compromised",
                    "source": "scan",
                    "where": places,
                    "masked": first.masked,
                    "fingerprint": first.fingerprint,
                    "fingerprints": ",".join(sorted(fps)),
                    "action": "account credentials: rotate them"
                    if account
                    else "marked compromised (the policies contain it)",
                },
            )
        )
        self.rt.events.record(
            Event(
                now,
                "leak_found",
                None if account else owner,
                "keywatch:scan",
                summary,
                {
                    "source": "scan",
                    "fingerprint": first.fingerprint,
                    "where": [{"path": f.path, "line": f.line, "commit": f.commit} for f in items[:20]],
                },
            )
        )

    async def _unmanaged(self, findings: list[Finding], now: datetime) -> None:
        self._restore()
        by_fp: dict[str, list[Finding]] = {}
        for f in findings:
            by_fp.setdefault(f.fingerprint, []).append(f)
        fresh: list[Incoming] = []
        for fp, items in sorted(by_fp.items()):
            if fp in self.unmanaged:
                continue
            f = items[0]
            places = ", ".join(where(x) for x in items[:5])
            fresh.append(incoming(None, items, {fp}))
            await self.rt.emit_alert(
                Alert(
                    identity=f"leak_scan_unmanaged:{fp}",
                    severity=Severity.WARNING,
                    firing=True,
                    title=f"an unmanaged {f.provider} key was found in {f.path}",
                    summary=f"a {f.rule} ({f.masked}, {fp}) that keywatch does not manage was found in {places}: "
                    "revoke it at the provider if it is real",
                    at=now,
                    provider=f.provider,
                    fields={"source": "scan", "rule": f.rule, "where": places, "masked": f.masked, "fingerprint": fp},
                )
            )
        await immediate.report_exposed(fresh)  # recorded as unmanaged leaks (nothing to contain)
        for fp in sorted(self.unmanaged - set(by_fp)):
            await self.rt.emit_alert(
                Alert(
                    identity=f"leak_scan_unmanaged:{fp}",
                    severity=Severity.WARNING,
                    firing=False,
                    title="an unmanaged key is no longer found by the scheduled scan",
                    summary=fp,
                    at=now,
                )
            )
        self.unmanaged = set(by_fp)

    async def aclose(self) -> None:
        scheduler = self.rt.scheduler
        if scheduler is not None and scheduler.get_job(JOB_ID) is not None:
            scheduler.remove_job(JOB_ID)


async def setup(rt: Runtime) -> ScanService:
    service = ScanService(rt)
    rt.on_cycle("leak_scan", service.on_cycle)
    # The job is added by the first cycle's hook, which runs once every capability is up: a scan that
    # starts earlier (a follower taking the lead starts them one by one) would find no containment yet.
    log.info("leak_scan_ready", paths=settings_of(rt.inventory.config).paths)
    return service
