"""Tables. The database holds the current state per key, every change, hourly rollups and the audit trail:
it grows with changes, not with probes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        from datetime import UTC

        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        from datetime import UTC

        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class KeyStateRow(Base):
    __tablename__ = "key_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[str] = mapped_column(String(80))
    masked: Mapped[str] = mapped_column(String(80))
    health: Mapped[str] = mapped_column(String(24), default="unknown")
    health_since: Mapped[datetime | None]
    last_probe_at: Mapped[datetime | None]
    consecutive: Mapped[int] = mapped_column(Integer, default=0)
    http_status: Mapped[int | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    requests_remaining: Mapped[int | None]
    tokens_remaining: Mapped[int | None]
    compromised: Mapped[bool] = mapped_column(default=False)
    compromise_reason: Mapped[str | None] = mapped_column(Text)
    admin_state: Mapped[str] = mapped_column(String(16), default="active")
    admin_actor: Mapped[str | None] = mapped_column(String(128))
    admin_reason: Mapped[str | None] = mapped_column(Text)
    admin_changed_at: Mapped[datetime | None]
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TransitionRow(Base):
    __tablename__ = "transitions"
    __table_args__ = (Index("ix_transitions_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(32))
    old: Mapped[str] = mapped_column(String(24))
    new: Mapped[str] = mapped_column(String(24))
    at: Mapped[datetime]
    http_status: Mapped[int | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)


class ProbeRollupRow(Base):
    __tablename__ = "probe_rollups"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    health: Mapped[str] = mapped_column(String(24), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    latency_sum_ms: Mapped[float] = mapped_column(Float, default=0.0)
    latency_max_ms: Mapped[float] = mapped_column(Float, default=0.0)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_key_at", "key", "at"), Index("ix_events_at", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(48))
    key: Mapped[str | None] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ProviderOutageRow(Base):
    """One provider outage, open while `ended_at` is null."""

    __tablename__ = "provider_outages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32), index=True)
    scope: Mapped[str] = mapped_column(String(300))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    failed: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
