"""Cluster tables: the members with their heartbeats, and the one leadership row with the fencing token."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from keywatch.store.models import Base


class ClusterMemberRow(Base):
    """One instance sharing the database; `heartbeat_at` is the database's clock, never the host's."""

    __tablename__ = "cluster_members"

    instance: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class ClusterLeaderRow(Base):
    """Exactly one row (id 1): who leads, since when, and the fencing token of its term. `backend_pid` is the
    PostgreSQL session holding the advisory lock, so a successor can end a leader that stopped beating."""

    __tablename__ = "cluster_leader"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance: Mapped[str | None] = mapped_column(String(64))
    token: Mapped[int] = mapped_column(BigInteger, default=0)
    backend_pid: Mapped[int | None] = mapped_column(Integer)
    since: Mapped[datetime | None]
