"""A session's life, part 2 (issue 13): a change notice keeps the lines it announces (the
record before the re-import is overwritten, so the notice's "what changed" lives on its
campaign), and a session remembers when its organizer was last told that a seat came free
inside the promotion cutoff (so the organizer is told once per freed seat, not once a beat).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs: batch mode on SQLite adds nullable columns without rebuilding the
    # table (a rebuild of campaigns would cascade to its deliveries; see 0010).
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.add_column(sa.Column("details", sa.Text(), nullable=True))
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.add_column(
            sa.Column("promotion_held_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.drop_column("promotion_held_at")
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.drop_column("details")
