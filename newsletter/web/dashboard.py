"""The organizer dashboard under /admin, server-rendered, in Chinese like the rest of the UI.

Every route needs the login cookie (:func:`~newsletter.web.admin_session.require_admin`;
without it the app redirects to the login form) and every POST a form token bound to that
login. Pages: the sessions with their counts and the recent campaigns (``/admin``), one
session with its RSVP-over-time chart, attendees, CSV export and reminder button, one
campaign's progress. Actions call the same services as the CLI and the JSON API.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, HTTPException, Path
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from newsletter.campaigns import change_notices, reminders
from newsletter.campaigns import service as campaigns
from newsletter.campaigns.followup import NobodyCheckedIn, create_followup
from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rendering.session_view import session_view
from newsletter.rsvp import checkin, history, promotion
from newsletter.rsvp import repo as rsvp_repo
from newsletter.rsvp.export import session_attendees_csv
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.web.admin_session import AdminLogin, check_csrf, csrf_token, require_admin
from newsletter.web.dashboard_chart import NARROW, SERIES, WIDE, build_chart
from newsletter.web.dashboard_followup import followup_panel
from newsletter.web.dashboard_login import redirect
from newsletter.web.dashboard_reminders import reminder_view
from newsletter.web.dashboard_views import (
    attendee_view,
    campaign_view,
    history_row,
    session_row,
)
from newsletter.web.pages import SECURITY_HEADERS, page
from tasks.campaigns import start_campaign
from tasks.dispatch import enqueue

router = APIRouter(prefix="/admin", include_in_schema=False)
log = logging.getLogger(__name__)

Login = Annotated[AdminLogin, Depends(require_admin)]
Csrf = Annotated[str, Form()]
Number = Annotated[int, Path(ge=1, le=1_000_000)]
CampaignId = Annotated[int, Path(ge=1, le=2**31 - 1)]

# How many campaigns the front page lists, and how many points the chart and its table get.
RECENT_CAMPAIGNS = 20
CHART_POINTS = 300
TABLE_POINTS = 200
# A page of thousands of rows helps nobody and weighs megabytes; the CSV has everyone.
ATTENDEES_SHOWN = 1000


def _zone() -> ZoneInfo:
    return ZoneInfo(get_settings().timezone)


def _render(template: str, login: AdminLogin, status_code: int = 200, **context: Any) -> Response:
    """A dashboard page: every one carries the form token its forms (logout at least) need."""
    return page(template, status_code, csrf=csrf_token(login), **context)


@router.get("", response_class=HTMLResponse)
def index(login: Login) -> Response:
    """Sessions (newest first) with answer counts, and recent campaigns with progress."""
    zone = _zone()
    with session_scope(get_settings().database_url) as db:
        sessions = [session_row(s) for s in sessions_repo.list_with_counts(db)]
        recent = [
            campaign_view(c, progress, zone)
            for c, progress in campaigns.list_progress(db, RECENT_CAMPAIGNS)
        ]
    return _render("admin_index.html", login, sessions=sessions, campaigns=recent)


def _salon(db: Session, number: int) -> SalonSession:
    salon = sessions_repo.get_by_number(db, number)
    if salon is None:
        raise HTTPException(404, f"第 {number} 期活动不存在。")
    return salon


def _session_page(
    login: AdminLogin, number: int, *, status_code: int = 200, problem: str | None = None
) -> Response:
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        salon = _salon(db, number)
        zone = ZoneInfo(salon.timezone)
        view = session_view(salon, sessions_repo.record_of(salon), settings.base_url)
        counts = rsvp_repo.counts(db, salon.id)
        door = checkin.attendance(db, salon.id)
        rows = rsvp_repo.attendees(db, salon.id, limit=ATTENDEES_SHOWN)
        attendees = [attendee_view(r, zone) for r in rows]
        points = history.history(db, salon.id)
        # Lines run until now, but stay flat once the session is over.
        end = min(utcnow(), salon.ends_at)
        capacity = salon.capacity
        held = promotion.held_line(salon, utcnow())  # seats freed inside the promotion cutoff
        own = [
            campaign_view(c, progress, _zone())
            for c, progress in campaigns.list_progress(db, session_id=salon.id)
        ]
        planned = [reminder_view(p, zone) for p in reminders.session_plan(db, salon, settings)]
        followup = followup_panel(db, salon)
        change_notice = change_notices.state(db, salon)
    drawn = history.thin(points, CHART_POINTS)
    charts = [
        build_chart(drawn, end=end, zone=zone, geometry=g, capacity=capacity)
        for g in (NARROW, WIDE)
    ]
    return _render(
        "admin_session.html",
        login,
        status_code,
        session=view,
        full_title=salon.title,
        counts=counts,
        door=door,
        held=held,
        attendees=attendees,
        attendees_total=counts.answers,
        charts=[c for c in charts if c is not None],
        series=SERIES,
        latest=points[-1] if points else None,
        table=[history_row(p, zone) for p in history.thin(points, TABLE_POINTS)],
        thinned=len(points) > TABLE_POINTS,
        zone=salon.timezone,
        campaigns=own,
        reminders=planned,
        followup=followup,
        change_notice=change_notice,
        problem=problem,
    )


@router.get("/sessions/{number}", response_class=HTMLResponse)
def session_page(number: Number, login: Login) -> Response:
    """One session: counts, the RSVP-over-time chart, attendees, export and reminder."""
    return _session_page(login, number)


@router.get("/sessions/{number}/rsvps.csv", response_class=Response)
def session_csv(number: Number, login: Login) -> Response:
    """The attendee list as CSV (the same file as ``newsletter rsvp list --csv``)."""
    with session_scope(get_settings().database_url) as db:
        salon = _salon(db, number)
        text = session_attendees_csv(db, salon.id)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="rsvps-{number}.csv"',
        },
    )


def _start(campaign_id: int) -> bool:
    """Enqueue sending after the commit; False (logged) when the broker refused it."""
    try:
        enqueue(start_campaign, campaign_id)
    except Exception:  # broker down: the campaign stays as committed, a retry can send it
        log.exception("could not enqueue campaign %s", campaign_id)
        return False
    return True


@router.post("/sessions/{number}/remind", response_class=HTMLResponse)
def remind(number: Number, login: Login, csrf: Csrf = "") -> Response:
    """Create a reminder for everyone confirmed, start sending it, show its progress."""
    check_csrf(csrf, login)
    try:
        with session_scope(get_settings().database_url) as db:
            campaign_id = campaigns.create_reminder(db, number).id
    except NotFoundError:
        raise HTTPException(404, f"第 {number} 期活动不存在。") from None
    except InvalidStateError as exc:  # nobody confirmed, the session is over, …
        return _session_page(login, number, status_code=409, problem=f"无法发送提醒：{exc}")
    if not _start(campaign_id):
        return _campaign_page(login, campaign_id, status_code=503, problem=_NOT_QUEUED)
    return redirect(f"/admin/campaigns/{campaign_id}")


@router.post("/sessions/{number}/followup", response_class=HTMLResponse)
def send_followup(
    number: Number, login: Login, csrf: Csrf = "", everyone: Annotated[str, Form()] = ""
) -> Response:
    """Create the session's follow-up (to those checked in; ``everyone``: to all who answered
    yes or maybe) and start sending it; refusals come back on the session page."""
    check_csrf(csrf, login)
    try:
        with session_scope(get_settings().database_url) as db:
            campaign_id = create_followup(db, number, everyone=everyone == "1").id
    except NotFoundError:
        raise HTTPException(404, f"第 {number} 期活动不存在。") from None
    except NobodyCheckedIn:
        problem = (
            f"无法发送回顾邮件：第 {number} 期没有人签到，发给“已签到的人”会谁也收不到。"
            "要感谢所有答复参加或可能的人，请点“发给所有答复参加或可能的人”"
            f"（命令行：newsletter campaign followup {number} --all）。"
        )
        return _session_page(login, number, status_code=409, problem=problem)
    except InvalidStateError as exc:  # not over, already sent
        return _session_page(login, number, status_code=409, problem=f"无法发送回顾邮件：{exc}")
    if not _start(campaign_id):
        return _campaign_page(login, campaign_id, status_code=503, problem=_NOT_QUEUED)
    return redirect(f"/admin/campaigns/{campaign_id}")


# An offset as stored (canonical ISO 8601, e.g. P1D, PT2H30M): nothing else reaches the service.
Occasion = Annotated[str, Path(pattern=r"^P(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$", max_length=40)]


@router.post("/sessions/{number}/reminders/{occasion}/cancel", response_class=HTMLResponse)
def cancel_reminder(number: Number, occasion: Occasion, login: Login, csrf: Csrf = "") -> Response:
    """Cancel one automatic reminder: a planned one is never sent, one sending stops."""
    check_csrf(csrf, login)
    settings = get_settings()
    try:
        reminders.cancel(settings.database_url, settings, number, occasion)
    except NotFoundError:
        raise HTTPException(404, f"第 {number} 期活动没有 {occasion} 的提醒。") from None
    except InvalidStateError as exc:  # already sent (a stale page)
        return _session_page(login, number, status_code=409, problem=f"无法取消提醒：{exc}")
    return redirect(f"/admin/sessions/{number}")


_NOT_QUEUED = "已保存，但暂时无法排队发送（消息队列不可用）。请稍后在这里点击“开始发送”。"


def _campaign_page(
    login: AdminLogin, campaign_id: int, *, status_code: int = 200, problem: str | None = None
) -> Response:
    try:
        with session_scope(get_settings().database_url) as db:
            campaign = campaigns.require_campaign(db, campaign_id)
            view = campaign_view(campaign, campaigns.progress(db, campaign_id), _zone())
    except NotFoundError:
        raise HTTPException(404, f"发送任务 {campaign_id} 不存在。") from None
    return _render("admin_campaign.html", login, status_code, campaign=view, problem=problem)


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign_page(campaign_id: CampaignId, login: Login) -> Response:
    """One campaign's progress and the buttons its state allows."""
    return _campaign_page(login, campaign_id)


@router.post("/campaigns/{campaign_id}/{action}", response_class=HTMLResponse)
def change_campaign(
    campaign_id: CampaignId,
    action: Literal["send", "pause", "resume", "cancel"],
    login: Login,
    csrf: Csrf = "",
) -> Response:
    """Send (or resume), pause or cancel, as ``POST /api/campaigns/{id}/{action}`` does."""
    check_csrf(csrf, login)
    try:
        with session_scope(get_settings().database_url) as db:
            start = campaigns.apply_organizer_action(db, campaign_id, action)
    except NotFoundError:
        raise HTTPException(404, f"发送任务 {campaign_id} 不存在。") from None
    except InvalidStateError as exc:  # e.g. pausing a finished campaign (a stale page)
        return _campaign_page(login, campaign_id, status_code=409, problem=f"无法执行：{exc}")
    if start and not _start(campaign_id):
        return _campaign_page(login, campaign_id, status_code=503, problem=_NOT_QUEUED)
    return redirect(f"/admin/campaigns/{campaign_id}")
