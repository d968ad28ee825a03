"""``newsletter rsvp``: who is coming."""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from newsletter.cli.common import SCHEMA_NOTE, console, database_for_reading, handles_errors
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.rsvp import repo
from newsletter.rsvp.export import session_attendees_csv
from newsletter.sessions.service import require_session

app = typer.Typer(help="Answers to invitations. " + SCHEMA_NOTE, no_args_is_help=True)

LABELS = {"yes": "是", "maybe": "可能", "no": "否"}


@app.command("list")
@handles_errors
def list_(
    number: int = typer.Argument(..., help="The session number."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on standard output."),
) -> None:
    """Answers for a session: confirmed, waitlist in order, maybe, no; and the counts."""
    settings = get_settings()
    database_for_reading()
    with session_scope(settings.database_url) as db:
        salon = require_session(db, number)
        if as_csv:
            sys.stdout.write(session_attendees_csv(db, salon.id))
            return
        rows = repo.attendees(db, salon.id)
        counts = repo.counts(db, salon.id)
        capacity = salon.capacity
    table = Table("#", "姓名", "邮箱", "答复", "同行", "答复时间")
    waiting = 0
    for index, row in enumerate(rows, 1):
        label = LABELS[row.answer]
        if row.waitlisted:
            waiting += 1
            label = f"候补 {waiting}"
        table.add_row(
            str(index),
            row.name,
            row.email,
            label,
            str(row.guests),
            row.answered_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    seats = f"{counts.seats}/{capacity}" if capacity else str(counts.seats)
    console.print(
        f"是 {counts.yes}（座位 {seats}），可能 {counts.maybe}，否 {counts.no}，"
        f"候补 {counts.waitlisted}"
    )
