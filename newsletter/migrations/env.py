"""Alembic environment: the URL comes from the caller (``newsletter db upgrade``), not an ini."""

from __future__ import annotations

from alembic import context

import newsletter.models  # noqa: F401  (fills Base.metadata)
from newsletter.db import Base, get_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "newsletter.migrate sets sqlalchemy.url"

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with get_engine(url).connect() as connection:
        # render_as_batch: SQLite can only alter tables by copying them.
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
