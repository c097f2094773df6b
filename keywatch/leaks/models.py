"""The leak tables. Never a secret: a report holds the secret's fingerprint and masked form only.

- leak_reports: every report received (matched or not), with where it was found and what came of it.
- leak_deliveries: delivery ids already received, per source, so a replayed delivery is refused.
- compromised_keys: managed keys found exposed; cleared only by a person (`keywatch enable --compromised-ok`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keywatch.store.models import Base


class LeakReportRow(Base):
    __tablename__ = "leak_reports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(String(32))
    delivery: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued | pending | matched | unmatched | resolved
    confidence: Mapped[str] = mapped_column(String(16))  # exact | pattern | provider
    key: Mapped[str | None] = mapped_column(String(128), index=True)
    fingerprint: Mapped[str | None] = mapped_column(String(80))
    masked: Mapped[str | None] = mapped_column(String(80))
    secret_type: Mapped[str | None] = mapped_column(String(120))
    location: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    validity: Mapped[str | None] = mapped_column(String(16))
    publicly_leaked: Mapped[bool | None]
    resolution: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LeakDeliveryRow(Base):
    __tablename__ = "leak_deliveries"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    delivery: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)


class CompromisedKeyRow(Base):
    __tablename__ = "compromised_keys"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(80))
    since: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))
    location: Mapped[str] = mapped_column(Text)
    report: Mapped[str | None] = mapped_column(String(32))
    contained_at: Mapped[datetime | None]
    cleared_at: Mapped[datetime | None]
    cleared_by: Mapped[str | None] = mapped_column(String(128))
    cleared_reason: Mapped[str | None] = mapped_column(Text)
