"""Importing session records: every file validated first, each stored whole or not at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter.errors import NotFoundError, RecordError
from newsletter.sessions import repo
from newsletter.sessions.models import SalonSession
from newsletter.sessions.records import collect_record_paths, load_record
from newsletter.sessions.schema import SessionRecord


@dataclass
class ImportReport:
    """What an import did, file by file."""

    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The record each updated session had before this import (what changed is read from it).
    previous: dict[int, SessionRecord] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        """How many records were written (created or updated)."""
        return len(self.created) + len(self.updated)


def import_records(db: Session, paths: Iterable[Path], *, timezone: str) -> ImportReport:
    """Import or update the records in ``paths`` (files or folders).

    A refused file stores nothing; the others are stored. Two files with the same number in one
    import refuse the second, since the outcome would depend on file order.
    """
    report = ImportReport()
    records: list[tuple[Path, SessionRecord]] = []
    seen: dict[int, Path] = {}
    files = collect_record_paths(paths)
    if not files:
        raise RecordError("no .yaml or .yml records found in " + ", ".join(map(str, paths)))
    for path in files:
        try:
            record = load_record(path)
        except RecordError as exc:
            report.errors.append(str(exc))
            continue
        if record.number in seen:
            report.errors.append(
                f"{path}: number: session {record.number} is also defined in {seen[record.number]}"
            )
            continue
        seen[record.number] = path
        records.append((path, record))
    for path, record in records:
        # A savepoint per file: a database refusal of one file leaves the others intact.
        with db.begin_nested():
            existing = repo.get_by_number(db, record.number)
            before = repo.record_of(existing) if existing is not None else None
            _, outcome = repo.upsert(db, record, timezone=timezone, source=str(path))
        if before is not None and outcome is repo.UpsertOutcome.updated:
            report.previous[record.number] = before
        getattr(report, outcome.value).append(record.number)
    return report


def require_session(db: Session, number: int) -> SalonSession:
    """The stored session ``number`` or a NotFoundError that says how to add it."""
    row = repo.get_by_number(db, number)
    if row is None:
        raise NotFoundError(
            f"session {number} is not in the database; import its record with "
            "`newsletter sessions import FILE.yaml`"
        )
    return row
