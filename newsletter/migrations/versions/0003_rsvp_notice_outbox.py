"""The mail an answer triggers is kept with the answer's history row until it is sent;
an index for seat counts and the waitlist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rsvp_events") as batch_op:
        batch_op.add_column(sa.Column("notice", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("notice_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("notice_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("notice_error", sa.Text(), nullable=True))
        batch_op.create_index("ix_rsvp_events_notice_due_at", ["notice_due_at"])
    with op.batch_alter_table("rsvps") as batch_op:
        batch_op.create_index(
            "ix_rsvps_session_waitlist", ["session_id", "waitlisted", "answered_at", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("rsvps") as batch_op:
        batch_op.drop_index("ix_rsvps_session_waitlist")
    with op.batch_alter_table("rsvp_events") as batch_op:
        batch_op.drop_index("ix_rsvp_events_notice_due_at")
        batch_op.drop_column("notice_error")
        batch_op.drop_column("notice_attempts")
        batch_op.drop_column("notice_due_at")
        batch_op.drop_column("notice")
