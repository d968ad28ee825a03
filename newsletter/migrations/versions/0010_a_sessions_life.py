"""A session's life (issue 13): what each campaign is for (change notices once per record
revision, automatic reminders once per offset, one follow-up), the waitlist's timing rules and
reminder offsets on the session, promotion and check-in times on answers, walk-ins, feedback.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.add_column(sa.Column("promotion_cutoff_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("confirm_within_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("reminder_offsets", sa.String(200), nullable=True))
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.add_column(sa.Column("occasion", sa.String(64), nullable=True))
    # A unique index, not a constraint: on SQLite a new constraint means rebuilding the
    # table, and dropping the old campaigns table would cascade to every delivery row.
    op.create_index(
        "uq_campaigns_session_kind_occasion",
        "campaigns",
        ["session_id", "kind", "occasion"],
        unique=True,
    )
    with op.batch_alter_table("rsvps") as batch_op:
        for column in ("promoted_at", "confirm_by", "checked_in_at"):
            batch_op.add_column(sa.Column(column, _WHEN, nullable=True))
    op.create_table(
        "walk_ins",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "session_id",
            sa.Integer(),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("at", _WHEN, nullable=False),
    )
    op.create_index("ix_walk_ins_session_id", "walk_ins", ["session_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "session_id",
            sa.Integer(),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("subscriber_id", sa.Integer(), sa.ForeignKey("subscribers.id"), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("at", _WHEN, nullable=False),
        sa.UniqueConstraint("session_id", "subscriber_id", name="uq_feedback_session_id"),
    )
    op.create_index("ix_feedback_subscriber_id", "feedback", ["subscriber_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("walk_ins")
    with op.batch_alter_table("rsvps") as batch_op:
        for column in ("promoted_at", "confirm_by", "checked_in_at"):
            batch_op.drop_column(column)
    op.drop_index("uq_campaigns_session_kind_occasion", table_name="campaigns")
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.drop_column("occasion")
    with op.batch_alter_table("sessions") as batch_op:
        for column in ("promotion_cutoff_s", "confirm_within_s", "reminder_offsets"):
            batch_op.drop_column(column)
