"""What a page shows of a session: plain strings, formatted the same way as the invitation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from newsletter.cache import BoundedCache
from newsletter.rendering.environment import cn_datetime_range, cn_deadline
from newsletter.sessions.models import SalonSession
from newsletter.sessions.repo import record_of
from newsletter.sessions.schema import SessionRecord, VenueMode


@dataclass(frozen=True)
class TalkView:
    """One talk, as a line on a page."""

    kind: str
    title: str
    speaker: str | None
    when: str | None


@dataclass(frozen=True)
class SessionView:
    """The facts a person needs to decide: what, when, where."""

    number: int
    heading: str
    title: str
    when: str
    where: str
    streams: list[tuple[str, str]]
    talks: list[TalkView]
    deadline: str | None
    capacity: int | None
    cancelled: bool
    calendar_url: str


def session_view(salon: SalonSession, record: SessionRecord, base_url: str) -> SessionView:
    """Format ``record`` for a page in the session's own time zone."""
    zone = ZoneInfo(salon.timezone)
    venue = record.venue
    if venue is None:
        where = "待定"
    elif venue.mode is VenueMode.online:
        where = "线上（" + "、".join(s.name for s in venue.streams) + "）"
    else:
        where = "，".join(part for part in (venue.name, venue.address) if part)
        if venue.mode is VenueMode.hybrid:
            where += "；也可线上观看"
    talks = [
        TalkView(
            kind=t.kind.label,
            title=t.title,
            speaker=t.speaker,
            when=cn_datetime_range(t.starts_at, t.ends_at, zone)
            if t.starts_at and t.ends_at
            else None,
        )
        for t in record.talks
    ]
    return SessionView(
        number=record.number,
        heading=f"第 {record.number} 期{record.series}",
        title=record.theme or record.title,
        when=cn_datetime_range(record.starts_at, record.ends_at, zone),
        where=where,
        streams=[(s.name, str(s.url)) for s in venue.streams] if venue else [],
        talks=talks,
        deadline=cn_deadline(salon.deadline, zone) if salon.deadline else None,
        capacity=salon.capacity,
        cancelled=salon.cancelled,
        calendar_url=f"{base_url}/sessions/{record.number}.ics",
    )


def view_of(salon: SalonSession, base_url: str) -> SessionView:
    """:func:`session_view` of the stored session, kept per version of the session (as the
    record is, see ``sessions.repo.record_of``): every RSVP page shows it."""
    return _views.get_or_make(
        (salon.id, salon.revision, salon.updated_at, base_url),
        lambda: session_view(salon, record_of(salon), base_url),
    )


def known_view(
    session_id: int, revision: int, updated_at: datetime, base_url: str
) -> SessionView | None:
    """The view of this version of the session if a page showed it before, else None."""
    return _views.get((session_id, revision, updated_at, base_url))


_views: BoundedCache[tuple[int, int, datetime, str], SessionView] = BoundedCache(256)
