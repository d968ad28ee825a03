"""A session as an iCalendar event (RFC 5545), for the .ics link and the confirmation mail.

The UID is stable per session and the SEQUENCE is the session's revision, so a calendar that
imported the event updates it when the record changes and removes it on CANCEL. Answers are
collected by web link only: the event is published (METHOD:PUBLISH), never a REQUEST that
would invite iMIP replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from icalendar import Calendar, Event

from newsletter.sessions.models import SalonSession
from newsletter.sessions.schema import SessionRecord, VenueMode


def event_uid(number: int, mail_domain: str) -> str:
    """The event's UID: the same for every download and every mail about this session."""
    return f"salon-{number}@{mail_domain}"


def session_calendar(
    salon: SalonSession,
    record: SessionRecord,
    *,
    mail_domain: str,
    organizer_name: str,
    organizer_address: str,
    page_url: str,
    stamp: datetime,
) -> bytes:
    """The .ics bytes of ``salon``: PUBLISH, or CANCEL when the session was cancelled."""
    method = "CANCEL" if salon.cancelled else "PUBLISH"
    calendar = Calendar()
    calendar.add("prodid", "-//salon-newsletter//invitations//ZH")
    calendar.add("version", "2.0")
    calendar.add("method", method)
    calendar.add_component(
        session_event(
            salon,
            record,
            mail_domain=mail_domain,
            organizer_name=organizer_name,
            organizer_address=organizer_address,
            page_url=page_url,
            stamp=stamp,
        )
    )
    return bytes(calendar.to_ical())


def session_event(
    salon: SalonSession,
    record: SessionRecord,
    *,
    mail_domain: str,
    organizer_name: str,
    organizer_address: str,
    page_url: str,
    stamp: datetime,
) -> Event:
    """The VEVENT of ``salon``, the one home of an event: the single .ics and the feed."""
    event = Event()
    event.add("uid", event_uid(salon.number, mail_domain))
    event.add("sequence", salon.revision)
    event.add("dtstamp", stamp)
    # In UTC: a fixed "+08:00" offset would otherwise be written as floating local time,
    # which every calendar reads in its own zone.
    event.add("dtstart", record.starts_at.astimezone(UTC))
    event.add("dtend", record.ends_at.astimezone(UTC))
    title = f"第 {record.number} 期{record.series}：{record.theme or record.title}"
    event.add("summary", title)
    event.add("status", "CANCELLED" if salon.cancelled else "CONFIRMED")
    event.add("url", page_url)
    organizer = f"mailto:{organizer_address}"
    event.add("organizer", organizer, parameters={"CN": organizer_name})
    location, lines = _where(record)
    if location:
        event.add("location", location)
    talks = [
        f"{t.kind.label}：{t.title}" + (f"（{t.speaker}）" if t.speaker else "")
        for t in record.talks
    ]
    event.add("description", "\n".join([*talks, *lines, page_url]))
    return event


def _where(record: SessionRecord) -> tuple[str | None, list[str]]:
    """LOCATION (the room, or the first stream's URL) and stream lines for the description."""
    venue = record.venue
    if venue is None:
        return None, []
    streams = [f"{s.name}：{s.url}" for s in venue.streams]
    if venue.mode is VenueMode.online:
        return str(venue.streams[0].url), streams
    room = ", ".join(part for part in (venue.name, venue.address) if part)
    return room, streams


def feed_calendar(
    sessions: Sequence[tuple[SalonSession, SessionRecord]],
    *,
    name: str,
    mail_domain: str,
    organizer_name: str,
    organizer_address: str,
    base_url: str,
) -> bytes:
    """``/calendar.ics``: every given session as one subscribable calendar.

    Each event is :func:`session_event`'s (same UID as the single .ics and the mails, SEQUENCE
    the revision, a cancelled one STATUS:CANCELLED), so a calendar that imported one session
    from a mail and subscribes to the feed sees one event, updated in place. DTSTAMP is the
    time the session was last imported, not the time of the request: the bytes stay the same
    until something changes, and calendars do not re-alert on every refresh.
    """
    calendar = Calendar()
    calendar.add("prodid", "-//salon-newsletter//invitations//ZH")
    calendar.add("version", "2.0")
    # A published feed: a cancelled event stays in it with its status (a CANCEL method would
    # apply to every event of the feed).
    calendar.add("method", "PUBLISH")
    calendar.add("x-wr-calname", name)
    calendar.add("refresh-interval", timedelta(hours=6), parameters={"VALUE": "DURATION"})
    calendar.add("x-published-ttl", "PT6H")
    for salon, record in sessions:
        calendar.add_component(
            session_event(
                salon,
                record,
                mail_domain=mail_domain,
                organizer_name=organizer_name,
                organizer_address=organizer_address,
                page_url=f"{base_url}/sessions/{salon.number}",
                stamp=salon.updated_at,
            )
        )
    return bytes(calendar.to_ical())
