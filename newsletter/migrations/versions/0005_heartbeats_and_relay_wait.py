"""Worker heartbeats, "a copy may have been accepted" per delivery, the relay wait per campaign.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_worker_heartbeats")),
    )
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(
            sa.Column("maybe_sent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.add_column(sa.Column("relay_retry_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("relay_failures", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.drop_column("relay_failures")
        batch_op.drop_column("relay_retry_at")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("maybe_sent")
    op.drop_table("worker_heartbeats")
