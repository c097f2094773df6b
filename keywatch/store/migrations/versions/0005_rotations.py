"""rotations: one row per rotation (never a secret)

Revision ID: 0005_rotations
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_rotations"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rotations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=24), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("intent", sa.String(length=24), nullable=True),
        sa.Column("old_credential", sa.String(length=200), nullable=True),
        sa.Column("new_credential", sa.String(length=200), nullable=True),
        sa.Column("new_name", sa.String(length=200), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rotations_key", "rotations", ["key"])


def downgrade() -> None:
    op.drop_index("ix_rotations_key", "rotations")
    op.drop_table("rotations")
