"""Scheduled scans of the `[scan]` paths inside the daemon (listed in keywatch.extensions).

A scheduler job (`leak_scan`, every `[scan] interval`, first run at start) scans the configured paths with
the same scanner as `keywatch scan`, in a worker thread. A managed key found there is exposed: it joins the
`compromised` signal on the runtime's board (added to what others raised there; no later scan takes it
away, only a new secret for the key, a rotation, does), a critical alert names the key and where it was
found, and the audit trail records it. Each secret is announced once; the alerts still firing after a
restart tell the capability what it had raised. An unmanaged provider key raises a warning per
fingerprint, resolved when it is no longer found. A path that is missing or unreadable is logged and
skipped; the scan goes on.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from keywatch.domain import Alert, Event, Severity, Signal
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
        """What the alerts still firing (the pipeline keeps them across restarts) say this capability raised."""
        if self._restored:
            return
        self._restored = True
        for a in self.rt.alerts.firing():
            owner = a.identity.removeprefix("leak_scan:")
            if a.identity.startswith("leak_scan:") and a.fields.get("fingerprints"):
                self.exposed.setdefault(owner, set()).update(a.fields["fingerprints"].split(","))
            elif a.identity.startswith("leak_scan_unmanaged:"):
                self.unmanaged.add(a.identity.removeprefix("leak_scan_unmanaged:"))

    def _raise(self) -> None:
        """The keys whose current secret (or a companion) was found: onto the board's compromised set. A key
        whose secret changed since (rotated) no longer carries it; nothing else takes it away."""
        current = {k.name: key_fingerprints(k) for k in self.rt.inventory.keys}
        active = {k for k, fps in self.exposed.items() if fps & current.get(k, set())}
        self.rt.board.set(Signal.COMPROMISED, active, by="leak_scan")

    async def _managed(self, findings: list[Finding], now: datetime) -> None:
        self._restore()
        by_owner: dict[str, list[Finding]] = {}
        for f in findings:
            by_owner.setdefault(f.key or "", []).append(f)
        providers = {k.name: k.provider for k in self.rt.inventory.keys}
        for owner, items in sorted(by_owner.items()):
            fps = {f.fingerprint for f in items}
            known = self.exposed.setdefault(owner, set())
            if fps <= known:
                continue  # already raised: the alert is firing, the signal set
            known |= fps
            await self._announce(owner, items, known, providers.get(owner), now)
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
        for fp, items in sorted(by_fp.items()):
            if fp in self.unmanaged:
                continue
            f = items[0]
            places = ", ".join(where(x) for x in items[:5])
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
    service.ensure_job()  # the scheduler starts after the capabilities: the first cycle's hook adds the job
    log.info("leak_scan_ready", paths=settings_of(rt.inventory.config).paths)
    return service
