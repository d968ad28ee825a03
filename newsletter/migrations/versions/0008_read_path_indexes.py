"""Read-path indexes: a session's answer history in chart order, read from the index.

The dashboard's session page replays ``rsvp_events`` of one session ordered by (at, id).
With only an index on session_id, PostgreSQL sorted the 82,000 events of a session of a
million-subscriber list after reading them (an external merge on disk at the default
work_mem: 180 ms of the query's 185 ms, benchmarks/scale.py). An index on
(session_id, at, id) hands them over in order. It replaces the index on session_id, which
it covers (the foreign key's cascade finds the rows through it too), so an answer still
writes as many index entries as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_rsvp_events_session_at", "rsvp_events", ["session_id", "at", "id"])
    op.drop_index("ix_rsvp_events_session_id", table_name="rsvp_events")


def downgrade() -> None:
    op.create_index("ix_rsvp_events_session_id", "rsvp_events", ["session_id"])
    op.drop_index("ix_rsvp_events_session_at", table_name="rsvp_events")
