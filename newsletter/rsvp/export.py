"""Attendee lists as CSV, the same for the CLI and the organizer API.

Every cell goes through :func:`spreadsheet_safe`, whatever its column: names and addresses
are typed by the people themselves (``=1+1@example.org`` is a valid address), and a column
that holds only our own values today may not tomorrow.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from sqlalchemy.orm import Session

from newsletter.rsvp import repo
from newsletter.rsvp.repo import AttendeeRow

COLUMNS = ["name", "email", "answer", "guests", "waitlisted", "answered_at", "updated_at"]

# What makes a spreadsheet program (Excel, LibreOffice, Google Sheets) read a cell as a
# formula (OWASP, "CSV Injection"), with the full-width forms that some programs fold into
# the ASCII ones. Looked for after any leading whitespace too, as importers may trim it.
_FORMULA_STARTS = frozenset("=+-@＝＋－＠")


def spreadsheet_safe(value: object) -> str:
    """The cell's text, with a leading ``'`` if a spreadsheet would take it for a formula.

    The apostrophe is what spreadsheets themselves use to mean "text as typed"; it shows in
    a plain-text view, which is the price of opening the file safely anywhere.
    """
    text = str(value)
    if text[:1].isalnum():  # most cells: neither whitespace nor a formula sign comes first
        return text
    risky = text.lstrip()[:1] in _FORMULA_STARTS or text[:1] in ("\t", "\r")
    return "'" + text if risky else text


def attendees_csv(rows: Sequence[AttendeeRow]) -> str:
    """UTF-8 CSV text (with a header row) of the answers; every cell spreadsheet-safe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
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
        ]
        writer.writerow([spreadsheet_safe(cell) for cell in cells])
    return out.getvalue()


def session_attendees_csv(db: Session, session_id: int) -> str:
    """The attendee CSV of a session (the CLI, the API and the dashboard serve this)."""
    return attendees_csv(repo.attendees(db, session_id))
