"""Reading and writing rotation rows. Synchronous, like keywatch.store.repo (called in a worker thread).
Every write commits at once: a step is durable before the next provider call."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from keywatch.rotation.models import RotationRow
from keywatch.runtime import fence

ACTIVE_STATES = ("running", "rolling_back")


@dataclass(frozen=True)
class Rotation:
    """One rotation as stored; never a secret."""

    id: str
    key: str
    provider: str
    mode: str
    step: str
    state: str
    new_name: str
    token: str
    actor: str
    reason: str
    started_at: datetime
    updated_at: datetime
    intent: str | None = None
    old_credential: str | None = None
    new_credential: str | None = None
    promoted_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


_FIELDS = [f.name for f in fields(Rotation)]


def _row(r: Rotation) -> RotationRow:
    return RotationRow(**{n: getattr(r, n) for n in _FIELDS})


def _from(row: RotationRow) -> Rotation:
    return Rotation(**{n: getattr(row, n) for n in _FIELDS})


class RotationStore:
    def __init__(self, engine: Engine) -> None:
        self.session = sessionmaker(engine, expire_on_commit=False)

    def save(self, r: Rotation) -> None:
        """Record a step. The fencing check is in the same transaction (runtime.fence: raises NotLeader when
        this instance no longer leads), and a step's provider call comes after its record, so a deposed
        leader neither records nor calls anything."""
        with self.session.begin() as s:
            fence(s)
            s.merge(_row(r))

    def get(self, rotation_id: str) -> Rotation | None:
        with self.session() as s:
            row = s.get(RotationRow, rotation_id)
            if row is None:  # a prefix, as the CLI shows it
                row = s.scalars(select(RotationRow).where(RotationRow.id.startswith(rotation_id))).first()
            return _from(row) if row else None

    def active(self) -> list[Rotation]:
        with self.session() as s:
            q = select(RotationRow).where(RotationRow.state.in_(ACTIVE_STATES)).order_by(RotationRow.started_at)
            return [_from(r) for r in s.scalars(q)]

    def active_for(self, key: str) -> Rotation | None:
        return next((r for r in self.active() if r.key == key), None)

    def history(self, limit: int = 200) -> list[Rotation]:
        with self.session() as s:
            q = select(RotationRow).order_by(RotationRow.started_at.desc()).limit(limit)
            return [_from(r) for r in s.scalars(q)]

    def last_done(self, key: str) -> Rotation | None:
        with self.session() as s:
            q = (select(RotationRow).where(RotationRow.key == key, RotationRow.state == "done")
                 .order_by(RotationRow.finished_at.desc()).limit(1))
            row = s.scalars(q).first()
            return _from(row) if row else None


def updated(r: Rotation, at: datetime, **changes: Any) -> Rotation:
    return replace(r, updated_at=at, **changes)
