"""All SQL about sessions: upsert by number, listing with RSVP counts, the archive table."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import cast
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Table, bindparam, case, func, select, update
from sqlalchemy.orm import Session

from newsletter.cache import BoundedCache
from newsletter.db import AloneStatement, fetch_row_alone, utcnow
from newsletter.rsvp.models import Answer, Rsvp
from newsletter.sessions.archive import ArchiveLink, ArchiveRow, ArchiveTalkGroup
from newsletter.sessions.models import SalonSession, SessionLink, Talk
from newsletter.sessions.offsets import stored_offsets
from newsletter.sessions.schema import SessionRecord, TalkKind


class UpsertOutcome(StrEnum):
    """What importing a record did to the database."""

    created = "created"
    updated = "updated"
    unchanged = "unchanged"


def _seconds(duration: timedelta | None) -> int | None:
    return int(duration.total_seconds()) if duration is not None else None


def get_by_number(db: Session, number: int) -> SalonSession | None:
    """The session with this number, or None."""
    return db.scalars(select(SalonSession).where(SalonSession.number == number)).first()


def get_by_id(db: Session, session_id: int) -> SalonSession | None:
    """The session with this primary key, or None."""
    return db.get(SalonSession, session_id)


def newest(db: Session) -> SalonSession | None:
    """The session with the highest number."""
    return db.scalars(select(SalonSession).order_by(SalonSession.number.desc())).first()


def upsert(
    db: Session, record: SessionRecord, *, timezone: str, source: str | None
) -> tuple[SalonSession, UpsertOutcome]:
    """Insert or update the session ``record.number``; talks and links are replaced whole.

    ``revision`` goes up only when the record really changed, because it is the calendar
    SEQUENCE: bumping it for a no-op import would make calendars re-alert attendees.
    """
    data = record.model_dump(mode="json", exclude_none=True)
    row = get_by_number(db, record.number)
    if row is not None and row.record == data:
        return row, UpsertOutcome.unchanged
    outcome = UpsertOutcome.updated
    if row is None:
        row = SalonSession(number=record.number, revision=0)
        db.add(row)
        outcome = UpsertOutcome.created
    else:
        row.revision += 1
        # Delete the old talks and links before inserting the new ones: the unit of work
        # would otherwise insert first and trip the (session_id, position) unique constraint.
        row.talks.clear()
        row.links.clear()
        db.flush()
    row.series = record.series
    row.title = record.title
    row.theme = record.theme
    row.starts_at = record.starts_at
    row.ends_at = record.ends_at
    row.timezone = record.timezone or timezone
    row.venue_mode = record.venue.mode.value if record.venue else None
    capacity = record.registration.capacity if record.registration else None
    recount = capacity != row.capacity
    row.capacity = capacity
    row.plus_ones = record.registration.plus_ones if record.registration else 0
    row.deadline = record.registration.deadline if record.registration else None
    registration = record.registration
    row.promotion_cutoff_s = _seconds(registration.promotion_cutoff if registration else None)
    row.confirm_within_s = _seconds(registration.confirm_within if registration else None)
    row.reminder_offsets = stored_offsets(record.reminders)
    row.cancelled = record.cancelled
    row.record = data
    row.source_path = source
    row.updated_at = utcnow()
    row.talks = [
        Talk(
            position=i,
            kind=t.kind.value,
            title=t.title,
            speaker=t.speaker,
            affiliation=t.affiliation,
            starts_at=t.starts_at,
            ends_at=t.ends_at,
        )
        for i, t in enumerate(record.talks)
    ]
    row.links = [
        SessionLink(position=i, title=link.title, url=str(link.url))
        for i, link in enumerate(record.links)
    ]
    db.flush()
    if recount and outcome is UpsertOutcome.updated:
        _recount_seats(db, row.id)
    return row, outcome


def _recount_seats(db: Session, session_id: int) -> None:
    """The seat counters from the answers, when a session gets (or changes) its seat limit:
    answers keep them only while there is a limit (see rsvp.answer_repo). Under the session
    row's lock, as answers take it too."""
    confirmed = (Rsvp.answer == Answer.yes) & Rsvp.waitlisted.is_(False)
    taken, waiting, last = db.execute(
        select(
            func.coalesce(func.sum(case((confirmed, 1 + Rsvp.guests), else_=0)), 0),
            func.coalesce(func.sum(case((Rsvp.waitlisted.is_(True), 1), else_=0)), 0),
            func.coalesce(func.max(Rsvp.queue_no), 0),
        ).where(Rsvp.session_id == session_id)
    ).one()
    db.execute(
        update(SalonSession)
        .where(SalonSession.id == session_id)
        .values(seats_taken=int(taken), waiting=int(waiting), queue_next=int(last) + 1)
        .execution_options(synchronize_session="fetch")
    )


def record_of(row: SalonSession) -> SessionRecord:
    """The validated record a stored session was imported from.

    Kept per process by (id, revision, time of import), which every import that changes the
    record moves: pages read the record on every request, and validating it, or even
    loading its JSON (see the deferred column in ``rsvp.repo``), costs more than the rest of
    the row. Records are immutable (frozen pydantic models), so sharing one is safe.
    """
    return _records.get_or_make(
        (row.id, row.revision, row.updated_at), lambda: SessionRecord.model_validate(row.record)
    )


_records: BoundedCache[tuple[int, int, datetime], SessionRecord] = BoundedCache(256)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A line of ``sessions list``."""

    number: int
    series: str
    title: str
    starts_at_local: str
    venue_mode: str | None
    capacity: int | None
    yes: int
    maybe: int
    no: int
    waitlisted: int


def list_with_counts(db: Session) -> list[SessionSummary]:
    """Every session, newest first, with its RSVP counts (one grouped query, not one per row)."""
    counts = (
        select(
            Rsvp.session_id,
            func.sum(
                case((Rsvp.answer == Answer.yes, case((Rsvp.waitlisted, 0), else_=1)), else_=0)
            ).label("yes"),
            func.sum(case((Rsvp.answer == Answer.maybe, 1), else_=0)).label("maybe"),
            func.sum(case((Rsvp.answer == Answer.no, 1), else_=0)).label("no"),
            func.sum(case((Rsvp.waitlisted, 1), else_=0)).label("waitlisted"),
        )
        .group_by(Rsvp.session_id)
        .subquery()
    )
    query = (
        select(SalonSession, counts.c.yes, counts.c.maybe, counts.c.no, counts.c.waitlisted)
        .outerjoin(counts, counts.c.session_id == SalonSession.id)
        .order_by(SalonSession.number.desc())
    )
    out = []
    for row, yes, maybe, no, waitlisted in db.execute(query):
        local = row.starts_at.astimezone(ZoneInfo(row.timezone))
        out.append(
            SessionSummary(
                number=row.number,
                series=row.series,
                title=row.title,
                starts_at_local=local.strftime("%Y-%m-%d %H:%M"),
                venue_mode=row.venue_mode,
                capacity=row.capacity,
                yes=int(yes or 0),
                maybe=int(maybe or 0),
                no=int(no or 0),
                waitlisted=int(waitlisted or 0),
            )
        )
    return out


# The order the seed invitations list kinds in one archive cell.
_KIND_ORDER = [TalkKind.paper, TalkKind.lecture, TalkKind.practice]


def archive_before(db: Session, number: int) -> list[ArchiveRow]:
    """The archive table for an invitation of session ``number``: every earlier session.

    Three queries whatever the number of sessions (sessions, their talks, their links),
    grouped in Python; this runs once per campaign, not per message.
    """
    return archive_rows(db, SalonSession.number < number, SalonSession.cancelled.is_(False))


def archive_rows(db: Session, *where: ColumnElement[bool]) -> list[ArchiveRow]:
    """The archive rows (期数, 时间, 内容 by kind, 链接) of the sessions matching ``where``,
    by number: the one home of a row, for the invitation's table and the public /archive."""
    sessions = db.execute(
        select(SalonSession.id, SalonSession.number, SalonSession.starts_at, SalonSession.timezone)
        .where(*where)
        .order_by(SalonSession.number)
    ).all()
    ids = [s.id for s in sessions]
    talks: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for session_id, kind, title in db.execute(
        select(Talk.session_id, Talk.kind, Talk.title)
        .where(Talk.session_id.in_(ids))
        .order_by(Talk.session_id, Talk.position)
    ):
        talks[session_id][kind].append(title)
    links: dict[int, list[ArchiveLink]] = defaultdict(list)
    for session_id, title, url in db.execute(
        select(SessionLink.session_id, SessionLink.title, SessionLink.url)
        .where(SessionLink.session_id.in_(ids))
        .order_by(SessionLink.session_id, SessionLink.position)
    ):
        links[session_id].append(ArchiveLink(title=title, url=url))
    rows = []
    for s in sessions:
        by_kind = talks[s.id]
        groups = tuple(
            ArchiveTalkGroup(label=kind.label, titles=tuple(by_kind[kind.value]))
            for kind in _KIND_ORDER
            if by_kind.get(kind.value)
        )
        rows.append(
            ArchiveRow(
                number=s.number,
                held_on=s.starts_at.astimezone(ZoneInfo(s.timezone)).date(),
                groups=groups,
                links=tuple(links[s.id]),
            )
        )
    return rows


@lru_cache(maxsize=1)
def _alone_session() -> AloneStatement:
    sessions = cast(Table, SalonSession.__table__)
    return AloneStatement(select(sessions).where(sessions.c.id == bindparam("session_id")))


async def load_alone(url: str, session_id: int) -> SalonSession | None:
    """The session's row on PostgreSQL's driver pool (the web app's answer path), as a
    detached object for the page's view of it; None if it is gone."""
    row = await fetch_row_alone(url, _alone_session(), {"session_id": session_id})
    if row is None:
        return None
    fields = dict(row)
    if isinstance(fields["record"], str):  # asyncpg hands json over as text
        fields["record"] = json.loads(fields["record"])
    return SalonSession(**fields)
