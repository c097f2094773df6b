"""The rotations table: one row per rotation. Never a secret: the new secret lives in the destinations'
pending stage and in memory; the row holds only credential ids, the idempotency token and the step."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keywatch.store.models import Base


class RotationRow(Base):
    __tablename__ = "rotations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))  # create | slots | assisted
    step: Mapped[str] = mapped_column(String(24))  # the last step recorded (see machine.STEPS)
    state: Mapped[str] = mapped_column(String(16))  # running | rolling_back | done | rolled_back | failed
    intent: Mapped[str | None] = mapped_column(String(24))  # the provider call about to be made, cleared after
    old_credential: Mapped[str | None] = mapped_column(String(200))
    new_credential: Mapped[str | None] = mapped_column(String(200))
    new_name: Mapped[str] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    promoted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
