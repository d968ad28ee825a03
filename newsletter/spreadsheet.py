"""CSV files organizers open in a spreadsheet: every cell safe to open, one dialect.

Every cell goes through :func:`spreadsheet_safe`, whatever its column: names and addresses
are typed by the people themselves (``=1+1@example.org`` is a valid address), and a column
that holds only our own values today may not tomorrow. Every CSV this product writes (the
attendee lists, the subscriber list) is written with :func:`csv_writer` and :func:`safe_row`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

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


def safe_row(cells: Iterable[object]) -> list[str]:
    """One CSV row, every cell through :func:`spreadsheet_safe`."""
    return [spreadsheet_safe(cell) for cell in cells]


def csv_writer(out: TextIO) -> Any:
    """A CSV writer with the line ends spreadsheets expect (CRLF, RFC 4180)."""
    return csv.writer(out, lineterminator="\r\n")
