"""Lists of addresses in and out: a suppression list applied, the subscriber list as CSV.

Suppressing goes through :func:`subscribers.service.suppress` (the one way an address is
blocked, seats given up included); the CSV's cells go through
:func:`newsletter.spreadsheet.safe_row` like every CSV this product writes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from newsletter.spreadsheet import csv_writer, safe_row
from subscribers import repo
from subscribers.models import SubscriberStatus
from subscribers.service import parse_status, suppress
from subscribers.validation import SubscriberDataError, normalise_email, normalise_tag


@dataclass
class SuppressReport:
    """The outcome of :func:`suppress_list`: counts and the refused lines (number, reason)."""

    added: int = 0  # not on the list before: stored as suppressed
    suppressed: int = 0  # on the list (active, pending, unsubscribed): now suppressed
    already: int = 0  # suppressed or bounced already (or twice in the list)
    errors: list[tuple[int, str]] = field(default_factory=list)


#: Statuses that already keep an address from being mailed for good: left as they are.
_NEVER_MAILED = (SubscriberStatus.suppressed.value, SubscriberStatus.bounced.value)


def suppress_list(db: Session, lines: Iterable[str], *, reason: str) -> SuppressReport:
    """Suppress every address of a suppression list, one address a line.

    Blank lines and ``#`` comments are skipped; a line that is no address is reported by its
    number and the rest are applied. An address not on the list is stored as suppressed
    (:func:`suppress`), so that no later import or sign-up mails it; a bounced address keeps
    its status (it is never mailed either, and the bounce says more).
    """
    report = SuppressReport()
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            address = normalise_email(text)
        except SubscriberDataError as exc:
            report.errors.append((number, str(exc)))
            continue
        existing = repo.get_by_email(db, address)
        if existing is not None and existing.status in _NEVER_MAILED:
            report.already += 1
            continue
        suppress(db, email=address, reason=reason)
        if existing is None:
            report.added += 1
        else:
            report.suppressed += 1
    return report


#: The columns of :func:`subscribers_csv`.
CSV_COLUMNS = ("email", "name", "locale", "status", "status_reason", "status_changed_at", "tags")


def subscribers_csv(
    db: Session, *, status: SubscriberStatus | str | None = None, tag: str | None = None
) -> Iterator[str]:
    """Every subscriber matching the filters as UTF-8 CSV text, a header row first, in
    pieces of up to 1,000 rows; every cell spreadsheet-safe (no formula can run)."""
    wanted = parse_status(status)
    tag_name = normalise_tag(tag) if tag is not None else None
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(CSV_COLUMNS)
    after = 0
    while True:
        page = repo.list_subscribers(
            db, status=wanted, tag=tag_name, limit=1000, offset=0, after_id=after
        )
        for person in page:
            changed = person.status_changed_at.isoformat() if person.status_changed_at else ""
            tags = ";".join(sorted(t.name for t in person.tags))
            cells = (
                person.email,
                person.name,
                person.locale,
                person.status,
                person.status_reason or "",
                changed,
                tags,
            )
            writer.writerow(safe_row(cells))
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(page) < 1000:
            return
        after = page[-1].id
