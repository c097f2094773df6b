"""outbox claims: which instance, under which fencing token, took a message to send it

Revision ID: 0008_outbox_claims
Revises: 0007_leaks
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_outbox_claims"
down_revision = "0007_leaks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_outbox") as b:
        b.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        b.add_column(sa.Column("claimed_token", sa.BigInteger(), nullable=True))
        b.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alert_outbox") as b:
        b.drop_column("claimed_at")
        b.drop_column("claimed_token")
        b.drop_column("claimed_by")
