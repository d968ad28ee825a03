"""The schema: migrations apply on both engines, timestamps come back aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy.orm import Session

from newsletter.migrate import current_revision
from subscribers.models import Subscriber


def test_migrations_reach_head(db_url: str) -> None:
    from alembic.script import ScriptDirectory

    from newsletter.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert head is not None and head >= "0004"
    assert current_revision(db_url) == head


def test_timestamps_round_trip_aware_in_utc(db: Session) -> None:
    shanghai = timezone(timedelta(hours=8))
    written = datetime(2019, 12, 5, 12, 30, tzinfo=shanghai)
    db.add(Subscriber(email="a@example.org", name="A", created_at=written))
    db.commit()
    db.expire_all()
    read = db.query(Subscriber).one().created_at
    assert read.tzinfo is not None
    assert read == written
    assert read.astimezone(UTC).hour == 4


def test_models_and_migrations_agree(db_url: str) -> None:
    """A model change without a migration would pass on a fresh test database and fail on
    every real one: compare the migrated schema with the models, as autogenerate would."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import newsletter.models  # noqa: F401  (fills the metadata)
    from newsletter.db import Base, get_engine

    with get_engine(db_url).connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
