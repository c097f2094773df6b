"""Reading and writing the leak tables. Synchronous, like keywatch.store.repo (called in a worker thread);
every write commits at once, so a report is durable before its receiver answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from keywatch.leaks.models import CompromisedKeyRow, LeakDeliveryRow, LeakReportRow


@dataclass(frozen=True)
class LeakReport:
    """One report as stored: where a secret was found, never the secret."""

    id: str
    received_at: datetime
    source: str
    state: str
    confidence: str
    location: str
    delivery: str | None = None
    key: str | None = None
    fingerprint: str | None = None
    masked: str | None = None
    secret_type: str | None = None
    url: str | None = None
    validity: str | None = None
    publicly_leaked: bool | None = None
    resolution: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Compromise:
    key: str
    fingerprint: str
    since: datetime
    source: str
    location: str
    report: str | None = None
    contained_at: datetime | None = None
    cleared_at: datetime | None = None
    cleared_by: str | None = None
    cleared_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.cleared_at is None


def _copy(obj: Any, cls: type, names: list[str]) -> Any:
    return cls(**{n: getattr(obj, n) for n in names})


_REPORT = [f.name for f in fields(LeakReport)]
_COMPROMISE = [f.name for f in fields(Compromise)]


class LeakStore:
    def __init__(self, engine: Engine) -> None:
        self.session = sessionmaker(engine, expire_on_commit=False)

    # -- deliveries -------------------------------------------------------------------------------------
    def receive(self, source: str, delivery: str, report: LeakReport | None) -> bool:
        """Remember the delivery and record its report in one transaction; False for a replay (nothing is
        recorded then)."""
        try:
            with self.session.begin() as s:
                receive_in(s, source, delivery, report)
        except IntegrityError:
            return False
        return True

    def run_batch(self, writes: list[Callable[[Session], Any]]) -> list[Any]:
        """`writes` in one transaction; when it fails, each in its own (the failing one fails alone). The
        results, or the exception of each that failed, in order (leaks.batch)."""
        try:
            with self.session.begin() as s:
                return [w(s) for w in writes]
        except Exception as exc:
            if len(writes) == 1:
                return [exc]
        return [self._alone(w) for w in writes]

    def _alone(self, w: Callable[[Session], Any]) -> Any:
        try:
            with self.session.begin() as s:
                return w(s)
        except Exception as exc:
            return exc

    def forget_deliveries(self, before: datetime) -> int:
        with self.session.begin() as s:
            return s.execute(delete(LeakDeliveryRow).where(LeakDeliveryRow.received_at < before)).rowcount or 0

    # -- reports ----------------------------------------------------------------------------------------
    def save_report(self, r: LeakReport) -> None:
        with self.session.begin() as s:
            save_report_in(s, r)

    def settle(self, r: LeakReport, mark: Compromise | None) -> Compromise | None:
        """The report as handled (`r`, typically `matched`) and, when given, the key's compromise mark, in one
        transaction: a process killed before it leaves the report `queued` (taken up again), one killed after
        leaves the mark (its containment tried again). Returns the mark as stored (the first one stands)."""
        with self.session.begin() as s:
            return settle_in(s, r, mark)

    def queued(self, limit: int = 100) -> list[LeakReport]:
        """Reports recorded and not yet handled (by an instance that does not act, or by one killed first),
        oldest first."""
        with self.session() as s:
            q = select(LeakReportRow).where(LeakReportRow.state == "queued")
            q = q.order_by(LeakReportRow.received_at).limit(limit)
            return [_copy(r, LeakReport, _REPORT) for r in s.scalars(q)]

    def claim(self, report_id: str, state: str) -> bool:
        """Move a queued report to `state`; False when another took it first."""
        with self.session.begin() as s:
            done = s.execute(
                update(LeakReportRow)
                .where(LeakReportRow.id == report_id, LeakReportRow.state == "queued")
                .values(state=state)
            )
            return bool(done.rowcount)

    def update_report(self, report_id: str, **changes: Any) -> LeakReport | None:
        with self.session.begin() as s:
            row = s.get(LeakReportRow, report_id)
            if row is None:
                return None
            for k, v in changes.items():
                setattr(row, k, v)
            return _copy(row, LeakReport, _REPORT)

    def reports(self, since: datetime | None = None, state: str | None = None, limit: int = 1000) -> list[LeakReport]:
        with self.session() as s:
            q = select(LeakReportRow).order_by(LeakReportRow.received_at.desc()).limit(limit)
            if since is not None:
                q = q.where(LeakReportRow.received_at >= since)
            if state is not None:
                q = q.where(LeakReportRow.state == state)
            return [_copy(r, LeakReport, _REPORT) for r in s.scalars(q)]

    # -- compromised keys -------------------------------------------------------------------------------
    def compromised(self, *, include_cleared: bool = False) -> dict[str, Compromise]:
        with self.session() as s:
            q = select(CompromisedKeyRow)
            if not include_cleared:
                q = q.where(CompromisedKeyRow.cleared_at.is_(None))
            return {r.key: _copy(r, Compromise, _COMPROMISE) for r in s.scalars(q)}

    def mark_compromised(self, c: Compromise) -> Compromise:
        """Record `c` unless the key is already marked (and not cleared): the first report stands."""
        with self.session.begin() as s:
            row = s.get(CompromisedKeyRow, c.key)
            if row is not None and row.cleared_at is None:
                return _copy(row, Compromise, _COMPROMISE)
            s.merge(_copy(c, CompromisedKeyRow, _COMPROMISE))
            return c

    def mark_contained(self, key: str, at: datetime) -> None:
        with self.session.begin() as s:
            mark_contained_in(s, key, at)

    def clear(self, key: str, actor: str, reason: str, at: datetime) -> Compromise | None:
        """A person vouches for the key again (`keywatch enable --compromised-ok`)."""
        with self.session.begin() as s:
            row = s.get(CompromisedKeyRow, key)
            if row is None or row.cleared_at is not None:
                return None
            row.cleared_at, row.cleared_by, row.cleared_reason = at, actor, reason
            return _copy(row, Compromise, _COMPROMISE)


# -- writes inside a caller's transaction (LeakStore's methods, and leaks.batch's shared transactions) ---------
def receive_in(s: Session, source: str, delivery: str, report: LeakReport | None) -> None:
    """Raises IntegrityError (at the flush) for a delivery already received."""
    at = report.received_at if report is not None else datetime.now(UTC)
    s.add(LeakDeliveryRow(source=source, delivery=delivery, received_at=at))
    if report is not None:
        s.add(_copy(report, LeakReportRow, _REPORT))
    s.flush()


def save_report_in(s: Session, r: LeakReport) -> None:
    s.merge(_copy(r, LeakReportRow, _REPORT))


def settle_in(s: Session, r: LeakReport, mark: Compromise | None) -> Compromise | None:
    s.merge(_copy(r, LeakReportRow, _REPORT))
    if mark is None:
        return None
    row = s.get(CompromisedKeyRow, mark.key)
    if row is not None and row.cleared_at is None:
        return _copy(row, Compromise, _COMPROMISE)
    s.merge(_copy(mark, CompromisedKeyRow, _COMPROMISE))
    return mark


def mark_contained_in(s: Session, key: str, at: datetime) -> None:
    row = s.get(CompromisedKeyRow, key)
    if row is not None and row.contained_at is None:
        row.contained_at = at


__all__ = ["Compromise", "LeakReport", "LeakStore", "replace"]
