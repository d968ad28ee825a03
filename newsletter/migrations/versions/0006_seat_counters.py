"""Seat counters: each session keeps its seats taken, its waiting answers and its next queue
number, and the guests a person may bring; each answer keeps its place in the queue. Filled
from the answers already recorded.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SESSIONS = sa.table(
    "sessions",
    sa.column("id", sa.Integer()),
    sa.column("record", sa.JSON()),
    sa.column("plus_ones", sa.Integer()),
    sa.column("seats_taken", sa.Integer()),
    sa.column("waiting", sa.Integer()),
    sa.column("queue_next", sa.Integer()),
)
_RSVPS = sa.table(
    "rsvps",
    sa.column("id", sa.Integer()),
    sa.column("session_id", sa.Integer()),
    sa.column("answer", sa.String()),
    sa.column("guests", sa.Integer()),
    sa.column("waitlisted", sa.Boolean()),
    sa.column("answered_at", sa.DateTime(timezone=True)),
    sa.column("queue_no", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch_op:
        for name, default in (("plus_ones", "0"), ("seats_taken", "0"), ("waiting", "0")):
            batch_op.add_column(
                sa.Column(name, sa.Integer(), nullable=False, server_default=default)
            )
        batch_op.add_column(
            sa.Column("queue_next", sa.Integer(), nullable=False, server_default="1")
        )
    with op.batch_alter_table("rsvps") as batch_op:
        batch_op.add_column(sa.Column("queue_no", sa.Integer(), nullable=False, server_default="0"))
        batch_op.drop_index("ix_rsvps_session_waitlist")
        batch_op.create_index("ix_rsvps_session_queue", ["session_id", "waitlisted", "queue_no"])
    _fill(op.get_bind())


def _fill(connection: sa.Connection) -> None:
    """Counters from the answers as they are: every "yes" gets its place in its session's
    queue in the order the waitlist had (time of answering, then id)."""
    r = _RSVPS
    yes = r.c.answer == "yes"
    places = sa.select(
        r.c.id,
        sa.func.row_number()
        .over(partition_by=r.c.session_id, order_by=(r.c.answered_at, r.c.id))
        .label("place"),
    ).where(yes)
    for rsvp_id, place in connection.execute(places).all():
        connection.execute(sa.update(r).where(r.c.id == rsvp_id).values(queue_no=place))
    confirmed = yes & r.c.waitlisted.is_(False)
    sessions = connection.execute(sa.select(_SESSIONS.c.id, _SESSIONS.c.record)).all()
    for session_id, record in sessions:
        counts = connection.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(sa.case((confirmed, 1 + r.c.guests), else_=0)), 0),
                sa.func.coalesce(sa.func.sum(sa.case((r.c.waitlisted.is_(True), 1), else_=0)), 0),
                sa.func.coalesce(sa.func.max(r.c.queue_no), 0) + 1,
            ).where(r.c.session_id == session_id)
        ).one()
        connection.execute(
            sa.update(_SESSIONS)
            .where(_SESSIONS.c.id == session_id)
            .values(
                plus_ones=_plus_ones(record),
                seats_taken=int(counts[0]),
                waiting=int(counts[1]),
                queue_next=int(counts[2]),
            )
        )


def _plus_ones(record: Any) -> int:
    if isinstance(record, str):
        record = json.loads(record)
    registration = (record or {}).get("registration") or {}
    return int(registration.get("plus_ones") or 0)


def downgrade() -> None:
    with op.batch_alter_table("rsvps") as batch_op:
        batch_op.drop_index("ix_rsvps_session_queue")
        batch_op.create_index(
            "ix_rsvps_session_waitlist", ["session_id", "waitlisted", "answered_at", "id"]
        )
        batch_op.drop_column("queue_no")
    with op.batch_alter_table("sessions") as batch_op:
        for name in ("queue_next", "waiting", "seats_taken", "plus_ones"):
            batch_op.drop_column(name)
