"""Public calendar files: ``/sessions/{number}.ics`` (the invitation links here)."""

from __future__ import annotations

from email.utils import parseaddr

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from newsletter.calendar import session_calendar
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.sessions import repo as sessions_repo
from newsletter.web.public_cache import PUBLIC_METHODS

# Pages and feeds for people and their apps, not the organizers' JSON API: kept out of
# /openapi.json (a GET+HEAD route would also list one operation id twice).
router = APIRouter(include_in_schema=False)


@router.api_route("/sessions/{number}.ics", methods=PUBLIC_METHODS)
def session_ics(number: int) -> Response:
    """The session as an iCalendar file (PUBLISH, or CANCEL once cancelled)."""
    settings = get_settings()
    if not 0 < number < 1_000_000:
        raise HTTPException(404, "没有这一期活动。")
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_number(db, number)
        if salon is None:
            raise HTTPException(404, "没有这一期活动。")
        name, address = parseaddr(settings.from_address)
        data = session_calendar(
            salon,
            sessions_repo.record_of(salon),
            mail_domain=settings.sender_domain,
            organizer_name=name or settings.organizer,
            organizer_address=address,
            page_url=f"{settings.base_url}/sessions/{number}.ics",
            stamp=utcnow(),
        )
    return Response(
        data,
        media_type="text/calendar; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="salon-{number}.ics"'},
    )
