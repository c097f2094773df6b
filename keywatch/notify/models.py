"""Alerting tables: the outbox (what must still be delivered), what each alert identity last told people,
and silences. An alert is written here before any sink sees it, so a restart loses and repeats nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keywatch.store.models import Base

PENDING, DELIVERED, DROPPED = "pending", "delivered", "dropped"


class OutboxRow(Base):
    __tablename__ = "alert_outbox"
    __table_args__ = (Index("ix_alert_outbox_sink_status_id", "sink", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sink: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(12), default=PENDING)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # who took the message to send it, last: the instance and its fencing token (AlertDB.claim)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_token: Mapped[int | None] = mapped_column(BigInteger)
    claimed_at: Mapped[datetime | None]


class AlertStateRow(Base):
    __tablename__ = "alert_state"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    firing: Mapped[bool] = mapped_column(default=False)
    notified_firing: Mapped[bool | None]
    severity: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime | None]
    last_notified_at: Mapped[datetime | None]
    recent: Mapped[list[Any]] = mapped_column(JSON, default=list)
    alert: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class SilenceRow(Base):
    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    matchers: Mapped[dict[str, Any]] = mapped_column(JSON)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
