"""``newsletter db``: schema migrations."""

from __future__ import annotations

import typer

from newsletter.cli.common import (
    console,
    database_for_reading,
    database_for_writing,
    handles_errors,
)
from newsletter.migrate import current_revision, head_revision
from newsletter.redaction import redact_url

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


@app.command()
@handles_errors
def upgrade() -> None:
    """Apply every pending migration to the configured database."""
    url = database_for_writing()
    console.print(f"database is at revision {current_revision(url)}")


@app.command()
@handles_errors
def status() -> None:
    """Check the database's schema revision (changes nothing); exit 1 unless it is current."""
    url = database_for_reading()
    console.print(f"{redact_url(url)} is at revision {head_revision()}, as this version needs")
