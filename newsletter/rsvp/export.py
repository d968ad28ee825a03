"""Attendee lists as CSV, the same for the CLI and the organizer API.

Every cell is spreadsheet-safe (:mod:`newsletter.spreadsheet`, the rule every CSV follows).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from sqlalchemy.orm import Session

from newsletter.rsvp import repo
from newsletter.rsvp.repo import AttendeeRow
from newsletter.spreadsheet import csv_writer, safe_row

COLUMNS = [
    "name",
    "email",
    "answer",
    "guests",
    "waitlisted",
    "answered_at",
    "updated_at",
    "checked_in_at",  # empty unless marked present at the door
]


def attendees_csv(rows: Sequence[AttendeeRow]) -> str:
    """UTF-8 CSV text (with a header row) of the answers; every cell spreadsheet-safe."""
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        cells: list[object] = [
            row.name,
            row.email,
            row.answer,
            row.guests,
            "yes" if row.waitlisted else "no",
            row.answered_at.isoformat(),
            row.updated_at.isoformat(),
            row.checked_in_at.isoformat() if row.checked_in_at else "",
        ]
        writer.writerow(safe_row(cells))
    return out.getvalue()


def session_attendees_csv(db: Session, session_id: int) -> str:
    """The attendee CSV of a session (the CLI, the API and the dashboard serve this)."""
    return attendees_csv(repo.attendees(db, session_id))
