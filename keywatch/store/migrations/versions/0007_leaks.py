"""leaks: leak reports, delivery ids (replays), compromised keys (never a secret)

Revision ID: 0007_leaks
Revises: 0006_cluster
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_leaks"
down_revision = "0006_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leak_reports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("delivery", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=True),
        sa.Column("fingerprint", sa.String(length=80), nullable=True),
        sa.Column("masked", sa.String(length=80), nullable=True),
        sa.Column("secret_type", sa.String(length=120), nullable=True),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("validity", sa.String(length=16), nullable=True),
        sa.Column("publicly_leaked", sa.Boolean(), nullable=True),
        sa.Column("resolution", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leak_reports_received_at", "leak_reports", ["received_at"])
    op.create_index("ix_leak_reports_state", "leak_reports", ["state"])
    op.create_index("ix_leak_reports_key", "leak_reports", ["key"])
    op.create_table(
        "leak_deliveries",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("delivery", sa.String(length=128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "delivery"),
    )
    op.create_index("ix_leak_deliveries_received_at", "leak_deliveries", ["received_at"])
    op.create_table(
        "compromised_keys",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=80), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("report", sa.String(length=32), nullable=True),
        sa.Column("contained_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_by", sa.String(length=128), nullable=True),
        sa.Column("cleared_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("compromised_keys")
    op.drop_index("ix_leak_deliveries_received_at", table_name="leak_deliveries")
    op.drop_table("leak_deliveries")
    op.drop_index("ix_leak_reports_key", table_name="leak_reports")
    op.drop_index("ix_leak_reports_state", table_name="leak_reports")
    op.drop_index("ix_leak_reports_received_at", table_name="leak_reports")
    op.drop_table("leak_reports")
