"""Joining and leaving, mail coming back (issue 12): sign-up and preference columns on
subscribers, the subscription-mail outbox, erased addresses' keyed hashes, returned mail,
and bounce and complaint counts on the campaign row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(16), nullable=True))
        for column in ("confirmed_at", "welcomed_at", "paused_until", "erased_at"):
            batch_op.add_column(sa.Column(column, _WHEN, nullable=True))
    with op.batch_alter_table("campaigns") as batch_op:
        for column in ("bounce_count", "complaint_count"):
            batch_op.add_column(sa.Column(column, sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "subscriber_mails",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("due_at", _WHEN, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sent_at", _WHEN, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_subscriber_mails_subscriber_id", "subscriber_mails", ["subscriber_id"])
    op.create_index("ix_subscriber_mails_due_at", "subscriber_mails", ["due_at"])
    op.create_table(
        "erased_addresses",
        sa.Column("address_hash", sa.String(64), primary_key=True),
        sa.Column("erased_at", _WHEN, nullable=False),
    )
    op.create_table(
        "inbound_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("received_at", _WHEN, nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column(
            "campaign_id",
            sa.Integer(),
            sa.ForeignKey("campaigns.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscribers.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("matched_by", sa.String(16), nullable=True),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("status_code", sa.String(16), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("raw_truncated", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_inbound_events_campaign_id", "inbound_events", ["campaign_id"])
    op.create_index(
        "ix_inbound_events_subscriber_kind_at",
        "inbound_events",
        ["subscriber_id", "kind", "received_at"],
    )


def downgrade() -> None:
    op.drop_table("inbound_events")
    op.drop_table("erased_addresses")
    op.drop_table("subscriber_mails")
    with op.batch_alter_table("campaigns") as batch_op:
        for column in ("bounce_count", "complaint_count"):
            batch_op.drop_column(column)
    with op.batch_alter_table("subscribers") as batch_op:
        for column in ("source", "confirmed_at", "welcomed_at", "paused_until", "erased_at"):
            batch_op.drop_column(column)
