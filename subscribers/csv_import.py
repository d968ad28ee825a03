"""Importing a subscriber list from CSV: every bad row reported by line, the rest stored at once.

The contract (SPEC, ``newsletter subscribers import FILE.csv``):

* Columns ``email`` and ``name`` are required, ``locale`` and ``tags`` optional; header names are
  case-insensitive; other columns are ignored (and listed in the report). UTF-8, with or
  without a byte-order mark.
* Every refused row is reported with the physical line on which its record *starts* (the header
  is line 1; a quoted name may span lines, which the ``csv`` module allows) and the reason.
* Addresses fold case-insensitively, within the file (the first occurrence wins, later ones are
  reported as duplicates) and against the database.
* A stored address is updated (name and locale when the file gives them; tags are added, never
  removed) only while active. An unsubscribed, bounced or suppressed address is left exactly as
  it is and counted as "kept unsubscribed": an old spreadsheet must never re-subscribe anyone.
  A pending one (signed up, not confirmed yet) is left as it is too, counted as "kept pending".
* An address that was erased (GDPR; :mod:`subscribers.erased`, keyed hashes under the secret
  keys) is skipped and reported by line: an import never brings an erased person back, only
  their own sign-up does.
* Single opt-in by default: the organizer vouches for the list, and new addresses are active at
  once. With ``confirm=True`` (``--confirm``) new addresses are added as pending and each is
  sent a confirmation mail instead (the sign-up's double opt-in); known addresses are treated
  as without it.
* All valid rows are written in the caller's one transaction, in chunks of bulk statements:
  if the database refuses anything, nothing is stored.

The file is parsed and validated completely before the first SQL statement, so a transaction
is never held open while Python validates 100,000 addresses.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import utcnow
from newsletter.errors import NewsletterError
from subscribers import mail_outbox_repo, repo
from subscribers.erased import erased_among
from subscribers.models import SubscriberMailKind, SubscriberStatus
from subscribers.validation import (
    DEFAULT_LOCALE,
    SubscriberDataError,
    normalise_email,
    normalise_locale,
    normalise_name,
    parse_tags,
)

REQUIRED_COLUMNS = ("email", "name")
OPTIONAL_COLUMNS = ("locale", "tags")
STORE_BLOCK = 5_000  # rows looked up, inserted and linked per round; one progress step each
_UTF8_BOM = b"\xef\xbb\xbf"
_NOT_UTF8 = "bytes that are not UTF-8 (save the file as 'CSV UTF-8'; Excel may have used GBK)"

Progress = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)``: phase ``"reading"`` counts bytes of the file,
``"storing"`` counts valid rows written."""


class ImportFileError(NewsletterError):
    """The file as a whole cannot be imported (missing, not CSV, a required column absent)."""


class ImportStoreError(NewsletterError):
    """The database refused the write; the transaction is rolled back and nothing is stored."""


@dataclass(frozen=True, slots=True)
class RowError:
    """A refused row: the line its record starts on, why, and its text (shortened)."""

    line: int
    reason: str
    raw: str | None = None


@dataclass
class ImportReport:
    """What an import did. ``errors`` lists every refused row in file order."""

    path: Path
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_unsubscribed: int = 0
    kept_pending: int = 0
    # Lines of addresses that were erased before: skipped, never stored again.
    erased_lines: list[int] = field(default_factory=list)
    # With confirm=True: the added people were asked to confirm (this many mails queued).
    confirmations: int = 0
    errors: list[RowError] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """Valid rows: added, updated, unchanged, kept unsubscribed or pending, or erased."""
        return (
            self.added
            + self.updated
            + self.unchanged
            + self.kept_unsubscribed
            + self.kept_pending
            + len(self.erased_lines)
        )

    @property
    def ok(self) -> bool:
        """True when no row was refused."""
        return not self.errors


@dataclass(slots=True)
class _Row:
    line: int
    email: str
    name: str
    locale: str | None  # None: the file does not say; keep the stored one (new rows: default)
    tags: list[str]


def import_csv(
    db: Session,
    path: Path | str,
    *,
    progress: Progress | None = None,
    confirm: bool = False,
    keys: Sequence[str] | None = None,
) -> ImportReport:
    """Import subscribers from the CSV file at ``path`` into ``db``'s transaction.

    Refused rows are reported in ``ImportReport.errors``; the valid ones are written. Does not
    commit: the caller's unit of work does, so valid rows are stored together or not at all.
    ``confirm``: new people are pending and their confirmation mails are queued (the caller
    has them sent after the commit: ``tasks.subscribers.send_soon``). ``keys``: the secret
    keys erased addresses are hashed under (default: the process settings').
    Raises :class:`ImportFileError` when the file cannot be read as a subscriber CSV at all,
    and :class:`ImportStoreError` when the database refuses the write.
    """
    file_path = Path(path)
    report = ImportReport(path=file_path)
    rows = _read(file_path, report, progress)
    erased_keys = list(keys) if keys is not None else get_settings().secret_keys
    try:
        _store(db, rows, report, progress, _Mode(confirm, erased_keys))
    except DBAPIError as exc:
        raise ImportStoreError(
            f"{file_path}: the database refused the import, nothing was stored: {exc.orig}"
        ) from exc
    return report


# ---------------------------------------------------------------------------------------------
# Reading and validating


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportFileError(f"{path} is a directory, not a CSV file") from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_start(path: Path, head: bytes) -> None:
    """Refuse, with a useful hint, files that are clearly not UTF-8 CSV."""
    if not head.strip():
        raise ImportFileError(f"{path} is empty: expected a header line 'email,name'")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportFileError(f"{path} is UTF-16 text; save it as 'CSV UTF-8'")
    if head.startswith(b"PK\x03\x04"):
        raise ImportFileError(f"{path} is an Excel workbook (or a zip); save it as 'CSV UTF-8'")
    if b"\x00" in head:
        raise ImportFileError(f"{path} is not a text file")


class _Lines:
    """Physical lines of a binary file, decoded; remembers which lines were not UTF-8.

    ``csv.reader.line_num`` counts the items this iterator yields, so yielding exactly one item
    per physical line makes it the physical line number. Lines end at ``\\n``, ``\\r\\n`` or a
    lone ``\\r`` (old Mac exports), as in the ``csv`` module with ``newline=''``.
    """

    def __init__(self, handle: BinaryIO, progress: Progress | None, total: int) -> None:
        self.bad: set[int] = set()
        self._handle = handle
        self._progress = progress
        self._total = total

    def __iter__(self) -> Iterator[str]:
        number = 0
        done = 0
        for chunk in self._handle:
            done += len(chunk)
            pieces = chunk.splitlines(keepends=True) if b"\r" in chunk[:-2] else [chunk]
            for piece in pieces:
                number += 1
                if number == 1 and piece.startswith(_UTF8_BOM):
                    piece = piece[len(_UTF8_BOM) :]
                try:
                    text = piece.decode("utf-8")
                except UnicodeDecodeError:
                    self.bad.add(number)
                    text = piece.decode("utf-8", errors="replace")
                yield text
            if self._progress is not None and number % 2_000 == 0:
                self._progress("reading", done, self._total)


def _csv_reason(exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return "a quoted field opened in this record is never closed (it runs to the end of file)"
    if "expected after" in text:
        return 'text follows a closing quote (write a quote inside a quoted field as "")'
    if "field larger than field limit" in text:
        return "a field is longer than the CSV field limit (a quote left open?)"
    if "NUL" in text:
        return "the record contains a NUL byte"
    return f"cannot be parsed as CSV: {text}"


def _shorten(record: list[str]) -> str:
    text = ",".join(record)
    return text if len(text) <= 120 else text[:119] + "…"


def _header(path: Path, record: list[str], report: ImportReport) -> dict[str, int]:
    """Column positions by lowercase name; raises ImportFileError when unusable."""
    names = [name.strip().lower() for name in record]
    positions: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in positions:
            raise ImportFileError(f"{path}: the column {name!r} appears twice in the header")
        positions[name] = index
    missing = [name for name in REQUIRED_COLUMNS if name not in positions]
    if missing:
        hint = ""
        if len(record) == 1 and any(sep in record[0] for sep in ";\t|"):
            hint = " (the columns seem separated by something else than commas)"
        found = ", ".join(repr(n) for n in names)
        raise ImportFileError(
            f"{path}: the header has no {' or '.join(repr(m) for m in missing)} column"
            f"{hint}; found {found}. The first line must name the columns, e.g. 'email,name'"
        )
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    report.ignored_columns = [name for name in names if name not in known]
    return positions


def _read(path: Path, report: ImportReport, progress: Progress | None) -> list[_Row]:
    """Parse and validate the whole file; refused rows go to ``report.errors``."""
    with _open(path) as handle:
        head = handle.read(4096)
        _check_start(path, head)
        handle.seek(0)
        total = path.stat().st_size
        lines = _Lines(handle, progress, total)
        reader = csv.reader(iter(lines), strict=True)
        positions: dict[str, int] | None = None
        rows: list[_Row] = []
        first_line: dict[str, int] = {}  # address -> line of its accepted row
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if positions is None:
                    raise ImportFileError(f"{path}: the header line is not valid CSV") from None
                report.errors.append(RowError(start, _csv_reason(exc)))
                continue
            if not any(f.strip() for f in record):
                continue  # blank lines (and ",,,") are not rows
            if lines.bad and lines.bad.intersection(range(start, reader.line_num + 1)):
                if positions is None:
                    raise ImportFileError(f"{path}: the header contains {_NOT_UTF8}")
                report.errors.append(RowError(start, f"the record contains {_NOT_UTF8}"))
                continue
            if positions is None:
                positions = _header(path, record, report)
                continue
            try:
                row = _validate(record, positions, start, first_line)
            except SubscriberDataError as exc:
                report.errors.append(RowError(start, str(exc), _shorten(record)))
                continue
            first_line[row.email] = row.line
            rows.append(row)
        if positions is None:
            raise ImportFileError(f"{path} has no header line: expected 'email,name'")
        if progress is not None:
            progress("reading", total, total)
    return rows


def _validate(
    record: list[str], positions: dict[str, int], line: int, first_line: dict[str, int]
) -> _Row:
    """One data record to a row, or SubscriberDataError saying what is wrong."""
    width = len(positions)
    if len(record) > width:
        raise SubscriberDataError(
            f"{len(record)} fields but the header has {width} "
            "(a comma inside a name? put the name in double quotes)"
        )
    missing = [name for name in REQUIRED_COLUMNS if positions[name] >= len(record)]
    if missing:
        raise SubscriberDataError(
            f"missing column {', '.join(repr(m) for m in missing)} "
            f"({len(record)} field{'s' if len(record) != 1 else ''}, the header has {width})"
        )

    def cell(column: str) -> str | None:
        index = positions.get(column)
        return record[index] if index is not None and index < len(record) else None

    raw_email = cell("email") or ""
    if not raw_email.strip():
        raise SubscriberDataError("the email column is empty")
    email = normalise_email(raw_email)
    if email in first_line:
        raise SubscriberDataError(f"duplicate of line {first_line[email]} ({email})")
    raw_locale = cell("locale")
    locale = normalise_locale(raw_locale) if raw_locale and raw_locale.strip() else None
    return _Row(line, email, normalise_name(cell("name")), locale, parse_tags(cell("tags")))


# ---------------------------------------------------------------------------------------------
# Storing


@dataclass(frozen=True, slots=True)
class _Mode:
    confirm: bool  # new people pending, with a confirmation mail each
    keys: list[str]  # for the erased addresses' hashes


def _store(
    db: Session, rows: list[_Row], report: ImportReport, progress: Progress | None, mode: _Mode
) -> None:
    """Write valid rows in blocks; each block costs a handful of bulk statements."""
    if not rows:
        return
    now = utcnow()
    # Tags are few (tens) even in a big list: create them all first, in one go.
    tag_ids = repo.ensure_tags(db, {tag for row in rows for tag in row.tags})
    total = len(rows)
    for block_start in range(0, total, STORE_BLOCK):
        block = rows[block_start : block_start + STORE_BLOCK]
        _store_block(db, block, tag_ids, report, now, mode)
        if progress is not None:
            progress("storing", block_start + len(block), total)


def _store_block(
    db: Session,
    block: list[_Row],
    tag_ids: dict[str, int],
    report: ImportReport,
    now: datetime,
    mode: _Mode,
) -> None:
    """Insert the new addresses of ``block``, update the active known ones, link tags.

    Known addresses that are not active are counted and left untouched: no statement here
    ever writes the ``status`` column. Erased addresses are not stored at all.
    """
    existing = repo.find_existing(db, [row.email for row in block])
    # Only an address not stored can have been erased: erasure removes it from its row.
    erased = erased_among(db, [row.email for row in block if row.email not in existing], mode.keys)
    report.erased_lines.extend(row.line for row in block if row.email in erased)
    block = [row for row in block if row.email not in erased]
    fresh = [row for row in block if row.email not in existing]
    new_ids = repo.insert_many(
        db,
        [repo.NewRow(r.email, r.name, r.locale or DEFAULT_LOCALE) for r in fresh],
        now,
        status=SubscriberStatus.pending if mode.confirm else SubscriberStatus.active,
        source="import",
    )
    if mode.confirm:
        mail_outbox_repo.add_many(db, list(new_ids.values()), SubscriberMailKind.confirm, now)
        report.confirmations += len(new_ids)
    links: list[tuple[int, int]] = []
    for row in fresh:
        if row.email in new_ids:
            report.added += 1
            links.extend((new_ids[row.email], tag_ids[tag]) for tag in row.tags)
    # Inserted by someone else since our lookup: handle those like any stored address.
    raced = [row.email for row in fresh if row.email not in new_ids]
    if raced:
        existing.update(repo.find_existing(db, raced))

    active = {email: ex for email, ex in existing.items() if ex.status == SubscriberStatus.active}
    current_tags = repo.tag_ids_of(db, [ex.id for ex in active.values()])
    profile_changes: list[tuple[int, str, str]] = []
    for row in block:
        if row.email in new_ids:
            continue
        stored = existing[row.email]
        if stored.status == SubscriberStatus.pending:
            report.kept_pending += 1
            continue
        if stored.status != SubscriberStatus.active:
            report.kept_unsubscribed += 1
            continue
        # A blank cell means "the file does not say", never "erase": keep the stored value.
        name = row.name or stored.name
        locale = row.locale or stored.locale
        profile_changed = (name, locale) != (stored.name, stored.locale)
        if profile_changed:
            profile_changes.append((stored.id, name, locale))
        have = current_tags.get(stored.id, set())
        extra = [tag_ids[tag] for tag in row.tags if tag_ids[tag] not in have]
        links.extend((stored.id, tag_id) for tag_id in extra)
        if profile_changed or extra:
            report.updated += 1
        else:
            report.unchanged += 1
    repo.update_profiles(db, profile_changes)
    repo.link_tags(db, links)
