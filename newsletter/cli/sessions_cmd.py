"""``newsletter sessions``: import and list session records."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from newsletter.cli import sessions_notify
from newsletter.cli.common import (
    SCHEMA_NOTE,
    console,
    database_for_reading,
    database_for_writing,
    err_console,
    fail,
    handles_errors,
)
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.sessions import repo
from newsletter.sessions.service import import_records

app = typer.Typer(
    help="Session records (one YAML file per session). " + SCHEMA_NOTE, no_args_is_help=True
)


@app.command("import")
@handles_errors
def import_(
    paths: list[Path] = typer.Argument(..., help="Record files or folders of *.yaml files."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would change and who would be told; write nothing."
    ),
    notify: bool = typer.Option(
        False,
        "--notify",
        help="Send a change notice (once per record revision) to everyone who answered yes,"
        " maybe or is on the waitlist of a session whose invitation went out.",
    ),
    notify_all: bool = typer.Option(
        False, "--notify-all", help="Like --notify, to everyone the invitation reached."
    ),
) -> None:
    """Import or update records; a record with errors is refused whole and named.

    For a session whose invitation went out, prints what changed (time, venue or streams,
    talks, cancelled) and how many people would be told.
    """
    settings = get_settings()
    database_for_writing()
    if dry_run:
        # Read only: SQLite commits a released outermost savepoint, so rolling back an
        # import would not undo it; the preview compares the files with the stored rows.
        with session_scope(settings.database_url) as db:
            report = sessions_notify.preview(db, paths, timezone=settings.timezone)
    else:
        with session_scope(settings.database_url) as db:
            report = import_records(db, paths, timezone=settings.timezone)
            sessions_notify.report_changes(db, report, timezone=settings.timezone)
    console.print(
        ("dry run, nothing written; it would be: " if dry_run else "")
        + f"{len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged"
    )
    for error in report.errors:
        err_console.print(error, markup=False, soft_wrap=True)
    if (notify or notify_all) and not dry_run:
        numbers = [*report.updated, *report.unchanged]
        sessions_notify.notify(numbers, everyone=notify_all)
    if report.errors:
        raise fail(f"{len(report.errors)} record(s) refused; nothing of them was stored")


@app.command("list")
@handles_errors
def list_() -> None:
    """Sessions, newest first, with their RSVP counts (reads only: never migrates)."""
    settings = get_settings()
    database_for_reading()
    with session_scope(settings.database_url) as db:
        rows = repo.list_with_counts(db)
    table = Table("期数", "时间", "系列", "标题", "方式", "名额", "是", "可能", "否", "候补")
    for row in rows:
        table.add_row(
            str(row.number),
            row.starts_at_local,
            row.series,
            row.title,
            row.venue_mode or "",
            str(row.capacity or ""),
            str(row.yes),
            str(row.maybe),
            str(row.no),
            str(row.waitlisted),
        )
    console.print(table)
    console.print(f"{len(rows)} sessions")
