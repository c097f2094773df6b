"""Every database read and write of alerting. Synchronous: callers run it in a worker thread.

The outbox is the contract between deciding and delivering: a decision and its outbox rows are written in one
transaction; before a send, the sender claims the row (`claim`: the fencing check, the row still pending, who
takes it, in one transaction); a row is marked delivered in one statement right after the sink accepted it, so
after a crash only rows never accepted are sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from keywatch.notify.ids import new_delivery_id
from keywatch.notify.models import DELIVERED, DROPPED, PENDING, AlertStateRow, OutboxRow, SilenceRow
from keywatch.runtime import fence, leadership_of


@dataclass
class AlertState:
    """What is true of one alert identity (`firing`) and what people were last told (`notified_firing`)."""

    identity: str
    firing: bool
    notified_firing: bool | None
    severity: str
    since: datetime | None
    last_notified_at: datetime | None
    recent: list[datetime]
    alert: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True)
class OutboxItem:
    id: int
    sink: str
    created_at: datetime
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class Silence:
    id: int
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.matchers.items())

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


class AlertDB:
    def __init__(self, session: sessionmaker[Session]) -> None:
        self.session = session

    # -- decisions ------------------------------------------------------------------------------
    def load_states(self) -> dict[str, AlertState]:
        with self.session() as s:
            return {r.identity: _state(r) for r in s.scalars(select(AlertStateRow))}

    def commit(
        self, states: Sequence[AlertState], rows: Sequence[tuple[str, dict[str, Any]]], now: datetime
    ) -> list[int]:
        """Alert states and the messages they cause, together or not at all, in the transaction that checks
        the fencing token (runtime.fence: raises NotLeader): a leader deposed before it noticed decides
        nothing, so its successor, which loads the states when it takes the lead, never decides the same
        alert a second time."""
        with self.session.begin() as s:
            fence(s)
            for st in states:
                s.merge(
                    AlertStateRow(
                        identity=st.identity,
                        firing=st.firing,
                        notified_firing=st.notified_firing,
                        severity=st.severity,
                        since=st.since,
                        last_notified_at=st.last_notified_at,
                        recent=[t.isoformat() for t in st.recent],
                        alert=st.alert,
                        updated_at=st.updated_at,
                    )
                )
            added = [
                OutboxRow(
                    sink=sink,
                    created_at=now,
                    status=PENDING,
                    payload={**payload, "delivery_id": payload.get("delivery_id") or new_delivery_id()},
                    attempts=0,
                )
                for sink, payload in rows
            ]
            s.add_all(added)
            s.flush()
            return [r.id for r in added]

    # -- delivery -------------------------------------------------------------------------------
    def next_pending(self, sink: str) -> OutboxItem | None:
        """The oldest undelivered message of one sink: per-sink order is outbox order."""
        with self.session() as s:
            r = s.scalars(
                select(OutboxRow)
                .where(OutboxRow.sink == sink, OutboxRow.status == PENDING)
                .order_by(OutboxRow.id)
                .limit(1)
            ).first()
            if r is None:
                return None
            return OutboxItem(r.id, r.sink, r.created_at, r.payload, r.attempts, r.next_attempt_at)

    def delivery_id(self, item: OutboxItem) -> str:
        """The row's delivery id; a row written before delivery ids existed gets one now, stored before it
        is first sent, so its retries carry the same id."""
        known = item.payload.get("delivery_id")
        if known:
            return str(known)
        new = new_delivery_id()
        with self.session.begin() as s:
            row = s.get(OutboxRow, item.id)
            if row is not None:
                current = (row.payload or {}).get("delivery_id")
                if current:
                    return str(current)
                row.payload = {**(row.payload or {}), "delivery_id": new}
        item.payload["delivery_id"] = new
        return new

    def claim(self, row_id: int, at: datetime) -> bool:
        """Just before a send: in one transaction, the fencing check (raises runtime.NotLeader when this
        instance no longer leads), the row still pending (False when another instance delivered or dropped
        it meanwhile: nothing to send), and the claim recorded (instance, token, time)."""
        with self.session.begin() as s:
            fence(s)
            q = select(OutboxRow).where(OutboxRow.id == row_id)
            row = s.scalars(q.with_for_update() if s.get_bind().dialect.name == "postgresql" else q).first()
            if row is None or row.status != PENDING:
                return False
            lead = leadership_of(s.get_bind())
            row.claimed_by, row.claimed_token, row.claimed_at = lead.instance, lead.token, at
            return True

    def pending_count(self, sink: str) -> int:
        with self.session() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.sink == sink, OutboxRow.status == PENDING)
                )
                or 0
            )

    def mark_delivered(self, row_id: int, at: datetime) -> None:
        with self.session.begin() as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id)
                .values(status=DELIVERED, delivered_at=at, last_error=None)
            )

    def mark_failed(self, row_id: int, attempts: int, next_attempt_at: datetime, error: str) -> None:
        with self.session.begin() as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id)
                .values(attempts=attempts, next_attempt_at=next_attempt_at, last_error=error[:500])
            )

    def drop_pending(self, sink: str, error: str, at: datetime) -> int:
        """A broken sink's queue up to `at`: kept as a record (status dropped), never sent."""
        with self.session.begin() as s:
            res = s.execute(
                update(OutboxRow)
                .where(OutboxRow.sink == sink, OutboxRow.status == PENDING, OutboxRow.created_at <= at)
                .values(status=DROPPED, delivered_at=at, last_error=error[:500])
            )
            return int(res.rowcount or 0)

    def messages(self, sink: str | None = None, status: str | None = None) -> list[OutboxItem]:
        """Outbox rows in order (for tests and inspection)."""
        q = select(OutboxRow).order_by(OutboxRow.id)
        if sink:
            q = q.where(OutboxRow.sink == sink)
        if status:
            q = q.where(OutboxRow.status == status)
        with self.session() as s:
            return [
                OutboxItem(r.id, r.sink, r.created_at, r.payload, r.attempts, r.next_attempt_at)
                for r in s.scalars(q)
            ]

    def purge(self, before: datetime) -> int:
        """Keep the outbox small: delivered and dropped messages, and silences, older than the retention."""
        with self.session.begin() as s:
            n = s.execute(delete(OutboxRow).where(OutboxRow.status != PENDING, OutboxRow.created_at < before))
            s.execute(delete(SilenceRow).where(SilenceRow.ends_at < before))
            s.execute(
                delete(AlertStateRow).where(
                    AlertStateRow.firing.is_(False), AlertStateRow.updated_at < before
                )
            )
            return int(n.rowcount or 0)

    # -- silences -------------------------------------------------------------------------------
    def add_silence(
        self, matchers: dict[str, str], starts_at: datetime, ends_at: datetime, created_by: str, reason: str
    ) -> int:
        with self.session.begin() as s:
            row = SilenceRow(
                matchers=matchers, starts_at=starts_at, ends_at=ends_at, created_by=created_by, reason=reason
            )
            s.add(row)
            s.flush()
            return row.id

    def silences(self, now: datetime | None = None) -> list[Silence]:
        """All silences, or only those in force at `now`."""
        q = select(SilenceRow).order_by(SilenceRow.id)
        if now is not None:
            q = q.where(SilenceRow.starts_at <= now, SilenceRow.ends_at > now)
        with self.session() as s:
            return [
                Silence(r.id, dict(r.matchers), r.starts_at, r.ends_at, r.created_by, r.reason)
                for r in s.scalars(q)
            ]

    def expire_silence(self, silence_id: int, now: datetime) -> bool:
        with self.session.begin() as s:
            res = s.execute(
                update(SilenceRow)
                .where(SilenceRow.id == silence_id, SilenceRow.ends_at > now)
                .values(ends_at=now)
            )
            return bool(res.rowcount)


def _state(r: AlertStateRow) -> AlertState:
    from keywatch.notify.base import parse_time

    return AlertState(
        identity=r.identity,
        firing=r.firing,
        notified_firing=r.notified_firing,
        severity=r.severity,
        since=r.since,
        last_notified_at=r.last_notified_at,
        recent=[parse_time(t) for t in (r.recent or [])],
        alert=dict(r.alert),
        updated_at=r.updated_at,
    )
