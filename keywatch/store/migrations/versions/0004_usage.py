"""usage: rollups, balances, pull sources, budget marks

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=24), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("width", sa.String(length=4), nullable=False),
        # integer microseconds on SQLite (keywatch.usage.models.BucketTime), timestamptz on PostgreSQL
        sa.Column("bucket", sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite"), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("line_item", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
        # bucket first: reads and replaces are bucket ranges; WITHOUT ROWID stores the key once on SQLite
        sa.PrimaryKeyConstraint("bucket", "account", "source", "width", "scope", "model", "line_item", "currency"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_balances",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("balance_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "currency", "at"),
    )
    op.create_table(
        "usage_sources",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("account"),
    )
    op.create_table(
        "budget_marks",
        sa.Column("budget", sa.String(length=128), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mark", sa.String(length=16), nullable=False),
        sa.Column("announced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ratio_ppm", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("budget", "period_start", "mark"),
    )


def downgrade() -> None:
    op.drop_table("budget_marks")
    op.drop_table("usage_sources")
    op.drop_table("usage_balances")
    op.drop_table("usage_rollups")
