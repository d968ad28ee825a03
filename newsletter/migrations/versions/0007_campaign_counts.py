"""Delivery counts on the campaign row, kept as deliveries change (filled from the rows here);
``pruned_at`` for campaigns whose delivery rows were removed; an index for the earliest
back-off end; on SQLite, delivery ids that are never handed out twice (AUTOINCREMENT).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "inflight", "sent", "failed", "skipped", "unconfirmed")

_CAMPAIGNS = sa.table(
    "campaigns",
    sa.column("id", sa.Integer()),
    *(sa.column(f"{status}_count", sa.Integer()) for status in STATUSES),
)
_DELIVERIES = sa.table(
    "deliveries",
    sa.column("campaign_id", sa.Integer()),
    sa.column("status", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch_op:
        for status in STATUSES:
            batch_op.add_column(
                sa.Column(f"{status}_count", sa.Integer(), nullable=False, server_default="0")
            )
        batch_op.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        # A message's id is its delivery's id: without AUTOINCREMENT SQLite gives a new row
        # max(id) + 1, so pruning the newest campaign's rows would hand their ids out again.
        # PostgreSQL's sequence never goes back. The table is rebuilt (rows and ids kept).
        with op.batch_alter_table(
            "deliveries", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch_op:
            batch_op.create_index(
                "ix_deliveries_campaign_status_due", ["campaign_id", "status", "next_attempt_at"]
            )
    else:
        op.create_index(
            "ix_deliveries_campaign_status_due",
            "deliveries",
            ["campaign_id", "status", "next_attempt_at"],
        )
    _fill(op.get_bind())


def _fill(connection: sa.Connection) -> None:
    """Every campaign's counts from its rows, in one UPDATE … FROM (a GROUP BY)."""
    d = _DELIVERIES
    per_campaign = (
        sa.select(
            d.c.campaign_id,
            *(
                sa.func.sum(sa.case((d.c.status == status, 1), else_=0)).label(status)
                for status in STATUSES
            ),
        )
        .group_by(d.c.campaign_id)
        .subquery("per_campaign")
    )
    connection.execute(
        sa.update(_CAMPAIGNS)
        .where(_CAMPAIGNS.c.id == per_campaign.c.campaign_id)
        .values({f"{status}_count": per_campaign.c[status] for status in STATUSES})
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("deliveries", recreate="always") as batch_op:
            batch_op.drop_index("ix_deliveries_campaign_status_due")
    else:
        op.drop_index("ix_deliveries_campaign_status_due", table_name="deliveries")
    with op.batch_alter_table("campaigns") as batch_op:
        batch_op.drop_column("pruned_at")
        for status in reversed(STATUSES):
            batch_op.drop_column(f"{status}_count")
