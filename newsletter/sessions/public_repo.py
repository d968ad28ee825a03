"""The SQL of the public pages (/, /sessions/{n}, /archive, /calendar.ics, /feed.xml).

These pages are read by anyone, often, and cached by browsers and proxies, so every query
here reads sessions only (never an answer or a subscriber: the pages hold no personal data)
and is bounded: a fixed number of statements per page whatever the number of sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select
from sqlalchemy.orm import Session

from newsletter.sessions.archive import ArchiveRow
from newsletter.sessions.models import SalonSession, Talk
from newsletter.sessions.repo import archive_rows

#: The most sessions the feeds list (newest first): years of a monthly salon.
FEED_LIMIT = 500
#: The most upcoming sessions the front page shows.
UPCOMING_LIMIT = 10


@dataclass(frozen=True, slots=True)
class SiteState:
    """What every public page depends on, for its validators (ETag, Last-Modified).

    ``changed_at`` is the last moment any page could have changed: the newest import of a
    session, or the end of the latest session that has ended since (an end moves a session
    from "next" to the archive without any import touching its row).
    """

    sessions: int
    ended: int
    changed_at: datetime | None


def site_state(db: Session, now: datetime) -> SiteState:
    """One aggregate over the sessions table for a page's validators.

    Why one statement: a conditional GET (If-None-Match) must be answered without rendering,
    so this is all a revalidation costs. The count catches a deleted session (the newest
    ``updated_at`` would not move); the number ended catches a session whose end passed.
    """
    ended = SalonSession.ends_at <= now
    count, ended_count, last_import, last_end = db.execute(
        select(
            func.count(SalonSession.id),
            func.coalesce(func.sum(case((ended, 1), else_=0)), 0),
            func.max(SalonSession.updated_at),
            func.max(case((ended, SalonSession.ends_at), else_=None)),
        )
    ).one()
    moments = [m for m in (last_import, last_end) if m is not None]
    return SiteState(
        sessions=int(count), ended=int(ended_count), changed_at=max(moments) if moments else None
    )


def upcoming(db: Session, now: datetime, limit: int = UPCOMING_LIMIT) -> list[SalonSession]:
    """The next sessions, soonest first, cancelled ones included (the page says so).

    Why ``ends_at``: a session under way is still "next" for someone looking for the stream.
    The starts_at index orders them; the filter keeps this to the few that have not ended.
    """
    return list(
        db.scalars(
            select(SalonSession)
            .where(SalonSession.ends_at > now)
            .order_by(SalonSession.starts_at, SalonSession.number)
            .limit(limit)
        )
    )


def latest(db: Session) -> SalonSession | None:
    """The most recently held or next session, whose record carries the club's profile
    (``about``): the newest word the organizers wrote about the club."""
    return db.scalars(select(SalonSession).order_by(SalonSession.starts_at.desc())).first()


def _matches(query: str) -> ColumnElement[bool]:
    """Sessions whose title or theme, or one of whose talks' title or speaker, contains
    ``query`` (case-insensitive for Latin letters; LIKE's % and _ in it are literal).

    Why LIKE and not a full-text index: a few hundred sessions, and Chinese text, which
    neither SQLite's nor PostgreSQL's default full-text parsers split into words.
    """
    needle = query.lower()

    def has(column: Any) -> ColumnElement[bool]:  # a text column, nullable or not
        return func.lower(column).contains(needle, autoescape=True)

    talks = select(Talk.session_id).where(or_(has(Talk.title), has(Talk.speaker)))
    return or_(has(SalonSession.title), has(SalonSession.theme), SalonSession.id.in_(talks))


def past_rows(db: Session, now: datetime, query: str | None = None) -> list[ArchiveRow]:
    """The archive of every session that has ended (cancelled ones never took place and are
    left out, as in the invitation's table), optionally only those matching ``query``.

    The rows are the invitation's (``sessions.repo.archive_rows``): three statements.
    """
    where = [SalonSession.ends_at <= now, SalonSession.cancelled.is_(False)]
    if query:
        where.append(_matches(query))
    return archive_rows(db, *where)


def past_titles(db: Session, numbers: list[int]) -> dict[int, str]:
    """Each session's shown title (its theme, else its title) by number, for the archive's
    rows, which carry talks but not the session's own name."""
    if not numbers:
        return {}
    rows = db.execute(
        select(SalonSession.number, SalonSession.theme, SalonSession.title).where(
            SalonSession.number.in_(numbers)
        )
    )
    return {number: theme or title for number, theme, title in rows}


def for_feeds(db: Session, limit: int = FEED_LIMIT) -> list[SalonSession]:
    """The sessions the calendar and Atom feeds carry: the newest ``limit`` by start, with
    cancelled ones (a subscribed calendar must learn of a cancellation)."""
    return list(
        db.scalars(
            select(SalonSession)
            .order_by(SalonSession.starts_at.desc(), SalonSession.number.desc())
            .limit(limit)
        )
    )
