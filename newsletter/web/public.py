"""The club's public pages: ``/`` (the club, its next sessions, the sign-up form),
``/sessions/{number}`` (one session) and ``/archive`` (every past session, searchable).

Server-rendered, no JavaScript, no personal data: they read sessions only
(``sessions.public_repo``). Each carries validators (``public_cache``): a conditional GET is
answered 304 after one aggregate query. The feeds are in ``public_feeds``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.rendering.environment import markdown_html, template_source
from newsletter.rendering.invitation import CLUB_PROFILE
from newsletter.rendering.session_view import SessionView, view_of
from newsletter.sessions import public_repo
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.archive import ArchiveRow
from newsletter.sessions.models import SalonSession
from newsletter.sessions.schema import SessionRecord
from newsletter.web import subscribe
from newsletter.web.pages import page
from newsletter.web.public_cache import PUBLIC_METHODS, Validators

# Pages and feeds for people and their apps, not the organizers' JSON API: kept out of
# /openapi.json (a GET+HEAD route would also list one operation id twice).
router = APIRouter(include_in_schema=False)

#: The longest search the archive takes; the rest of a longer one is not looked at.
MAX_QUERY = 100
# The front page's form token is valid for a day (subscribe.FORM_MAX_AGE_S); a cached copy
# is revalidated into a fresh one every quarter of that, so a kept page never posts a dead one.
_FORM_EPOCH_S = subscribe.FORM_MAX_AGE_S // 4
_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UNKNOWN = "没有这一期活动。请在沙龙回顾里查找。"


@dataclass(frozen=True)
class ShownSession:
    """A session as a public page shows it: the RSVP page's view plus the record itself
    (affiliations, links) and whether it is over."""

    view: SessionView
    record: SessionRecord
    ended: bool
    url: str


def _shown(salon: SalonSession, now: datetime) -> ShownSession:
    base = get_settings().base_url
    return ShownSession(
        view=view_of(salon, base),
        record=sessions_repo.record_of(salon),
        ended=salon.ends_at <= now,
        url=f"/sessions/{salon.number}",
    )


def _about(latest: SalonSession | None) -> Markup:
    """The club profile the newest record carries, else the configured one (as mails do)."""
    about = sessions_repo.record_of(latest).about if latest is not None else None
    return markdown_html(about or template_source(CLUB_PROFILE))


@router.api_route("/", response_class=HTMLResponse, methods=PUBLIC_METHODS)
def home(request: Request) -> Response:
    """The club, its next sessions with their talks, and the sign-up form."""
    settings = get_settings()
    now = utcnow()
    epoch = int(now.timestamp()) // _FORM_EPOCH_S
    epoch_start = datetime.fromtimestamp(epoch * _FORM_EPOCH_S, UTC)
    with session_scope(settings.database_url) as db:
        state = public_repo.site_state(db, now)
        changed = max(m for m in (state.changed_at, epoch_start) if m is not None)
        validators = Validators(("home", state, epoch, settings.organizer), changed)
        if validators.fresh(request):
            return validators.not_modified()
        sessions = [_shown(s, now) for s in public_repo.upcoming(db, now)]
        about = _about(public_repo.latest(db))
    response = page(
        "public_home.html",
        organizer=settings.organizer,
        about=about,
        sessions=sessions,
        **subscribe.form_context(),
    )
    return validators.apply(response)


def _number(text: str) -> int:
    """The session number of a path, or 404: digits only, as the archive prints them."""
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise HTTPException(404, _UNKNOWN)
    return int(text)


@router.api_route("/sessions/{number}", response_class=HTMLResponse, methods=PUBLIC_METHODS)
def session_page(number: str, request: Request) -> Response:
    """One session: talks, time and place, the .ics link, its recordings once recorded."""
    settings = get_settings()
    now = utcnow()
    with session_scope(settings.database_url) as db:
        salon = sessions_repo.get_by_number(db, _number(number))
        if salon is None:
            raise HTTPException(404, _UNKNOWN)
        ended = salon.ends_at <= now
        validators = Validators(
            ("session", salon.number, salon.revision, salon.updated_at, ended),
            max(salon.updated_at, salon.ends_at) if ended else salon.updated_at,
        )
        if validators.fresh(request):
            return validators.not_modified()
        shown = _shown(salon, now)
    return validators.apply(
        page("public_session.html", organizer=settings.organizer, session=shown)
    )


def clean_query(raw: str | None) -> str:
    """A search as text: controls dropped (PostgreSQL refuses NUL in text), whitespace runs
    made one space, cut at :data:`MAX_QUERY` characters."""
    if not raw:
        return ""
    text = " ".join(_NOT_TEXT.sub(" ", raw[: MAX_QUERY * 4]).split())
    return text[:MAX_QUERY]


@dataclass(frozen=True)
class ArchiveEntry:
    """One row of the public archive: the invitation's row and the session's own title."""

    row: ArchiveRow
    title: str


@router.api_route("/archive", response_class=HTMLResponse, methods=PUBLIC_METHODS)
def archive(request: Request, q: str | None = None) -> Response:
    """Every past session (期数, 时间, 内容 by kind, 链接), newest first; ``?q=`` searches
    titles, speakers and talk titles on the server (no JavaScript needed)."""
    settings = get_settings()
    now = utcnow()
    query = clean_query(q)
    with session_scope(settings.database_url) as db:
        state = public_repo.site_state(db, now)
        validators = Validators(("archive", state, query), state.changed_at)
        if validators.fresh(request):
            return validators.not_modified()
        rows = public_repo.past_rows(db, now, query or None)
        titles = public_repo.past_titles(db, [row.number for row in rows])
    entries = [ArchiveEntry(row, titles.get(row.number, "")) for row in reversed(rows)]
    return validators.apply(
        page(
            "public_archive.html",
            organizer=settings.organizer,
            entries=entries,
            query=query,
            max_query=MAX_QUERY,
        )
    )
