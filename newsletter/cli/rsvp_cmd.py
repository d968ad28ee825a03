"""``newsletter rsvp``: who is coming, and who came."""

from __future__ import annotations

import sys
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from newsletter.cli.common import (
    SCHEMA_NOTE,
    console,
    database_for_reading,
    database_for_writing,
    handles_errors,
)
from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.rsvp import checkin, repo
from newsletter.rsvp.checkin_repo import Attendance
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
        door = checkin.attendance(db, salon.id)
        capacity = salon.capacity
        zone = ZoneInfo(salon.timezone)
    table = Table("#", "姓名", "邮箱", "答复", "同行", "答复时间", "签到")
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
            row.checked_in_at.astimezone(zone).strftime("%H:%M") if row.checked_in_at else "",
        )
    console.print(table)
    seats = f"{counts.seats}/{capacity}" if capacity else str(counts.seats)
    console.print(
        f"是 {counts.yes}（座位 {seats}），可能 {counts.maybe}，否 {counts.no}，"
        f"候补 {counts.waitlisted}"
    )
    console.print(attendance_line(door))


def attendance_line(door: Attendance) -> str:
    """The door's figures in one line: present of confirmed, walk-ins, no-show rate."""
    rate = f"{door.no_show_rate:.0%}" if door.no_show_rate is not None else "-"
    return (
        f"签到 {door.present}/{door.confirmed}，现场报名 {door.walk_ins}，"
        f"出席 {door.present + door.walk_ins}，未到 {door.not_yet}（未到率 {rate}）"
    )


@app.command("checkin")
@handles_errors
def checkin_(
    number: int = typer.Argument(..., help="The session number."),
    code: str = typer.Argument(..., help="The attendee's check-in code, e.g. 61-1234-K7QWM3ZP."),
) -> None:
    """Mark an attendee present by their check-in code (from their confirmation mail, reminder
    or RSVP page). Checking in twice counts once and keeps the first time."""
    settings = get_settings()
    database_for_writing()
    with session_scope(settings.database_url) as db:
        salon = require_session(db, number)
        done = checkin.check_in_code(db, salon, code, settings.secret_keys)
        door = checkin.attendance(db, salon.id)
        zone = ZoneInfo(salon.timezone)
    who = done.name or f"subscriber #{done.subscriber_id}"
    at = done.at.astimezone(zone).strftime("%H:%M")
    if done.first:
        console.print(f"checked in: {who} at {at}" + (f" (+{done.guests})" if done.guests else ""))
    else:
        console.print(f"already checked in: {who} at {at} (counted once)")
    console.print(attendance_line(door))
