"""``newsletter db``: schema migrations."""

from __future__ import annotations

import typer

from newsletter.cli.common import console, handles_errors
from newsletter.config import get_settings
from newsletter.migrate import current_revision
from newsletter.migrate import upgrade as upgrade_schema

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


@app.command()
@handles_errors
def upgrade() -> None:
    """Apply every pending migration to the configured database."""
    url = get_settings().database_url
    upgrade_schema(url)
    console.print(f"database is at revision {current_revision(url)}")
