"""Attendee lists as CSV, the same for the CLI and the organizer API."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from newsletter.rsvp.repo import AttendeeRow

COLUMNS = ["name", "email", "answer", "guests", "waitlisted", "answered_at", "updated_at"]


def _cell(value: str) -> str:
    # A cell starting with = + - @ is a formula to spreadsheet programs: neutralise it.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def attendees_csv(rows: Sequence[AttendeeRow]) -> str:
    """UTF-8 CSV text (with a header row) of the answers."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [
                _cell(row.name),
                row.email,
                row.answer,
                row.guests,
                "yes" if row.waitlisted else "no",
                row.answered_at.isoformat(),
                row.updated_at.isoformat(),
            ]
        )
    return out.getvalue()
