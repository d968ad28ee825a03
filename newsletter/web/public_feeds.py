"""The public feeds: ``/calendar.ics`` (subscribable, every session) and ``/feed.xml`` (Atom).

Both list the newest :data:`~newsletter.sessions.public_repo.FEED_LIMIT` sessions, upcoming
and past alike, cancelled ones included: a calendar subscribed to the feed keeps the events
it showed and must learn that one was cancelled (STATUS:CANCELLED), and a past session's
entry is where its recording appears. The events are ``newsletter.calendar``'s (same UID and
SEQUENCE as the single .ics and the mails).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parseaddr
from xml.etree import ElementTree

from fastapi import APIRouter, Request
from fastapi.responses import Response

from newsletter.calendar import feed_calendar
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.rendering.session_view import view_of
from newsletter.sessions import public_repo
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.web.pages import SECURITY_HEADERS
from newsletter.web.public_cache import PUBLIC_METHODS, Validators

# Pages and feeds for people and their apps, not the organizers' JSON API: kept out of
# /openapi.json (a GET+HEAD route would also list one operation id twice).
router = APIRouter(include_in_schema=False)

ATOM = "http://www.w3.org/2005/Atom"


@router.api_route("/calendar.ics", methods=PUBLIC_METHODS)
def calendar_feed(request: Request) -> Response:
    """Every session as one iCalendar feed a calendar app subscribes to."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        state = public_repo.site_state(db, utcnow())
        # The feed does not depend on the clock (past and upcoming alike): imports only.
        validators = Validators(("calendar", state.sessions, state.changed_at), state.changed_at)
        if validators.fresh(request):
            return validators.not_modified()
        sessions = [(s, sessions_repo.record_of(s)) for s in public_repo.for_feeds(db)]
    name, address = parseaddr(settings.from_address)
    data = feed_calendar(
        sessions,
        name=settings.organizer,
        mail_domain=settings.sender_domain,
        organizer_name=name or settings.organizer,
        organizer_address=address,
        base_url=settings.base_url,
    )
    response = Response(data, media_type="text/calendar; charset=utf-8", headers=SECURITY_HEADERS)
    return validators.apply(response)


def _stamp(moment: datetime) -> str:
    """RFC 3339 in UTC, as Atom's ``updated`` wants it."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _entry(feed: ElementTree.Element, salon: SalonSession, base_url: str) -> None:
    view = view_of(salon, base_url)
    record = sessions_repo.record_of(salon)
    url = f"{base_url}/sessions/{salon.number}"
    entry = ElementTree.SubElement(feed, f"{{{ATOM}}}entry")
    title = f"{view.heading}：{view.title}"
    ElementTree.SubElement(entry, f"{{{ATOM}}}title").text = (
        f"【已取消】{title}" if salon.cancelled else title
    )
    ElementTree.SubElement(entry, f"{{{ATOM}}}id").text = url
    ElementTree.SubElement(entry, f"{{{ATOM}}}updated").text = _stamp(salon.updated_at)
    ElementTree.SubElement(entry, f"{{{ATOM}}}link", rel="alternate", href=url)
    lines = [f"时间：{view.when}", f"地点：{view.where}"]
    lines += [
        f"【{t.kind}】{t.title}" + (f"（{t.speaker}）" if t.speaker else "") for t in view.talks
    ]
    lines += [f"{link.title}：{link.url}" for link in record.links]
    # Text, not HTML: ElementTree escapes it, and no reader runs anything from it.
    ElementTree.SubElement(entry, f"{{{ATOM}}}summary", type="text").text = "\n".join(lines)


@router.api_route("/feed.xml", methods=PUBLIC_METHODS)
def atom_feed(request: Request) -> Response:
    """An Atom feed (RFC 4287) of the sessions, newest first: one entry each."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        state = public_repo.site_state(db, utcnow())
        validators = Validators(("atom", state.sessions, state.changed_at), state.changed_at)
        if validators.fresh(request):
            return validators.not_modified()
        sessions = public_repo.for_feeds(db)
        ElementTree.register_namespace("", ATOM)
        feed = ElementTree.Element(f"{{{ATOM}}}feed", {"xml:lang": "zh-CN"})
        ElementTree.SubElement(feed, f"{{{ATOM}}}title").text = f"{settings.organizer} · 沙龙活动"
        ElementTree.SubElement(feed, f"{{{ATOM}}}id").text = f"{settings.base_url}/"
        ElementTree.SubElement(feed, f"{{{ATOM}}}updated").text = _stamp(validators.changed_at)
        ElementTree.SubElement(
            feed, f"{{{ATOM}}}link", rel="self", href=f"{settings.base_url}/feed.xml"
        )
        ElementTree.SubElement(
            feed, f"{{{ATOM}}}link", rel="alternate", href=f"{settings.base_url}/"
        )
        author = ElementTree.SubElement(feed, f"{{{ATOM}}}author")
        ElementTree.SubElement(author, f"{{{ATOM}}}name").text = settings.organizer
        for salon in sessions:
            _entry(feed, salon, settings.base_url)
    data = ElementTree.tostring(feed, encoding="utf-8", xml_declaration=True)
    response = Response(
        data, media_type="application/atom+xml; charset=utf-8", headers=SECURITY_HEADERS
    )
    return validators.apply(response)
