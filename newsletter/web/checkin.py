"""The door: ``/admin/sessions/{number}/checkin``, an organizer's phone page.

Server-rendered and usable without script: a code typed (or scanned) into one form, a search
by name (a GET), a button per person to mark present or undo, a walk-in form. Every action is
a CSRF-protected POST answered by a redirect back to the page (so a reload repeats nothing;
the actions are idempotent anyway). A small script, allowed by a per-response nonce, sends the
same POSTs with ``fetch`` and ``Accept: application/json`` (the answer is then JSON: the
message and the new counts, no reload at the door), adds the camera (only where the browser
has ``BarcodeDetector``) and polls ``checkin/counts`` every few seconds, so two phones at two
doors see each other's check-ins. No address is shown.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Path, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from newsletter.config import get_settings
from newsletter.db import session_scope
from newsletter.errors import InvalidStateError
from newsletter.rsvp import checkin
from newsletter.rsvp.checkin import CheckinRefused, CodeForAnotherSession
from newsletter.rsvp.checkin_repo import DoorRow
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.tokens import TokenInvalid
from newsletter.web.admin_session import AdminLogin, check_csrf, csrf_token, require_admin
from newsletter.web.dashboard_login import redirect
from newsletter.web.pages import SECURITY_HEADERS, page

router = APIRouter(prefix="/admin", include_in_schema=False)

Login = Annotated[AdminLogin, Depends(require_admin)]
Csrf = Annotated[str, Form(max_length=400)]
Number = Annotated[int, Path(ge=1, le=1_000_000)]
PersonId = Annotated[int, Form(ge=1, le=2**31 - 1)]
# The page's script asks for JSON; a plain form post (no script) gets the page back.
Accept = Annotated[str, Header(max_length=400)]
# How often the page asks for the counts (ms): live enough at a door, light on the server.
POLL_MS = 4000

_REFUSED = {
    "no-answer": "此人没有报名本期活动。",
    "waitlisted": "此人在候补名单上，没有确认的名额。",
    "not-yes": "此人的答复不是“参加”，没有确认的名额。",
    "gone": "找不到这个人（可能已删除）。",
    "other": "无法签到。",
}
_ANSWERS = {"maybe": "可能", "no": "不参加"}


def _salon(db: Session, number: int) -> SalonSession:
    salon = sessions_repo.get_by_number(db, number)
    if salon is None:
        raise HTTPException(404, f"第 {number} 期活动不存在。")
    return salon


def _time(at: datetime | None, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%H:%M") if at else ""


def _page(
    login: AdminLogin,
    number: int,
    *,
    query: str = "",
    done: str | None = None,
    who: int | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> Response:
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        salon = _salon(db, number)
        zone = ZoneInfo(salon.timezone)
        counts = checkin.attendance(db, salon.id)
        rows = checkin.door_list(db, salon.id, query or None)
        person = checkin.door_person(db, salon.id, who) if who else None
        title, heading = salon.title, f"第 {salon.number} 期"
    message = _message(done, person, zone)
    nonce = secrets.token_urlsafe(16)
    response = page(
        "admin_checkin.html",
        status_code,
        csrf=csrf_token(login),
        number=number,
        heading=heading,
        title=title,
        counts=counts,
        rows=[
            {
                "id": row.subscriber_id,
                "name": row.name,
                "guests": row.guests,
                "at": _time(row.checked_in_at, zone),
            }
            for row in rows
        ],
        query=query,
        message=message,
        problem=problem,
        nonce=nonce,
        poll_ms=POLL_MS,
    )
    response.headers["Content-Security-Policy"] = _policy(nonce)
    return response


def _message(done: str | None, person: DoorRow | None, zone: ZoneInfo) -> str | None:
    """What the page says after an action (``done``) on ``person``."""
    if done == "walk-in":
        return "已添加一位现场报名。"
    if person is None or done not in ("present", "again", "undo"):
        return None
    name = person.name or "（未填姓名）"
    at = _time(person.checked_in_at, zone)
    return {
        "present": f"已签到：{name}（{at}）",
        "again": f"{name} 已在 {at} 签到过，不重复计数。",
        "undo": f"已撤销 {name} 的签到。",
    }[done]


def _counts(db: Session, salon: SalonSession) -> dict[str, Any]:
    """The counts and who is in (ids and local times): what the script shows."""
    zone = ZoneInfo(salon.timezone)
    counts = checkin.attendance(db, salon.id)
    present = checkin.present(db, salon.id)
    return {
        "confirmed": counts.confirmed,
        "present": counts.present,
        "walk_ins": counts.walk_ins,
        "not_yet": counts.not_yet,
        "in": {str(person): _time(at, zone) for person, at in present.items()},
    }


def _wants_json(accept: str) -> bool:
    return "application/json" in accept.lower()


def _policy(nonce: str) -> str:
    """The pages' policy plus this page's one script, its fetches and the camera's video."""
    return (
        SECURITY_HEADERS["Content-Security-Policy"]
        + f"; script-src 'nonce-{nonce}'; connect-src 'self'; media-src 'self' blob: mediastream:"
    )


@router.get("/sessions/{number}/checkin", response_class=HTMLResponse)
def checkin_page(
    number: Number,
    login: Login,
    q: Annotated[str, Query(max_length=100)] = "",
    done: Annotated[Literal["present", "again", "undo", "walk-in"] | None, Query()] = None,
    who: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """The door page: counts, the code form (and camera), the search, the walk-in form."""
    return _page(login, number, query=q.strip(), done=done, who=who)


@router.get("/sessions/{number}/checkin/counts")
def checkin_counts(number: Number, login: Login) -> JSONResponse:
    """The counts and who is in (ids and times), for the page's live refresh."""
    with session_scope(get_settings().database_url) as db:
        body = _counts(db, _salon(db, number))
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _back(number: int, done: str, who: int | None, accept: str) -> Response:
    """After an action: the page again (a redirect), or for the script the message and the
    counts as JSON."""
    if not _wants_json(accept):
        where = f"/admin/sessions/{number}/checkin?done={done}"
        return redirect(where + (f"&who={who}" if who else ""))
    with session_scope(get_settings().database_url) as db:
        salon = _salon(db, number)
        person = checkin.door_person(db, salon.id, who) if who else None
        body = _counts(db, salon) | {"message": _message(done, person, ZoneInfo(salon.timezone))}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _problem(
    login: AdminLogin, number: int, problem: str, status_code: int, accept: str
) -> Response:
    """A refusal in words: on the page, or as JSON for the script."""
    if _wants_json(accept):
        return JSONResponse(
            {"problem": problem}, status_code=status_code, headers={"Cache-Control": "no-store"}
        )
    return _page(login, number, problem=problem, status_code=status_code)


def _refused(login: AdminLogin, number: int, exc: CheckinRefused, accept: str) -> Response:
    if isinstance(exc, CodeForAnotherSession):
        problem = f"这是第 {exc.session_number} 期的签到码，不是本期的。"
    elif exc.reason == "not-yes":
        problem = f"此人的答复是“{_ANSWERS.get(exc.answer or '', exc.answer)}”，没有确认的名额。"
    else:
        problem = _REFUSED.get(exc.reason, _REFUSED["other"])
    return _problem(login, number, problem, 409, accept)


@router.post("/sessions/{number}/checkin/code", response_class=HTMLResponse)
def check_in_by_code(
    number: Number,
    login: Login,
    csrf: Csrf = "",
    code: Annotated[str, Form(max_length=200)] = "",
    accept: Accept = "",
) -> Response:
    """Mark present the attendee whose code was typed or scanned."""
    check_csrf(csrf, login)
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as db:
            salon = _salon(db, number)
            done = checkin.check_in_code(db, salon, code, settings.secret_keys)
    except TokenInvalid:
        problem = "签到码无效：可能输错了，请核对后重试，或按姓名搜索。"
        return _problem(login, number, problem, 400, accept)
    except CheckinRefused as exc:
        return _refused(login, number, exc, accept)
    return _back(number, "present" if done.first else "again", done.subscriber_id, accept)


@router.post("/sessions/{number}/checkin/present", response_class=HTMLResponse)
def check_in_person(
    number: Number, login: Login, subscriber: PersonId, csrf: Csrf = "", accept: Accept = ""
) -> Response:
    """Mark a person present from the list (found by name)."""
    check_csrf(csrf, login)
    try:
        with session_scope(get_settings().database_url) as db:
            done = checkin.check_in(db, _salon(db, number), subscriber)
    except CheckinRefused as exc:
        return _refused(login, number, exc, accept)
    return _back(number, "present" if done.first else "again", done.subscriber_id, accept)


@router.post("/sessions/{number}/checkin/undo", response_class=HTMLResponse)
def undo_check_in(
    number: Number, login: Login, subscriber: PersonId, csrf: Csrf = "", accept: Accept = ""
) -> Response:
    """Forget a check-in (tapped the wrong person); nothing to undo is no error."""
    check_csrf(csrf, login)
    with session_scope(get_settings().database_url) as db:
        checkin.undo(db, _salon(db, number), subscriber)
    return _back(number, "undo", subscriber, accept)


@router.post("/sessions/{number}/checkin/walk-in", response_class=HTMLResponse)
def add_walk_in(
    number: Number,
    login: Login,
    csrf: Csrf = "",
    name: Annotated[str, Form(max_length=400)] = "",
    accept: Accept = "",
) -> Response:
    """Count someone who came without an answer."""
    check_csrf(csrf, login)
    try:
        with session_scope(get_settings().database_url) as db:
            checkin.add_walk_in(db, _salon(db, number), name)
    except InvalidStateError:
        problem = f"请填写现场报名者的姓名（1–{checkin.MAX_WALK_IN_NAME} 个字）。"
        return _problem(login, number, problem, 400, accept)
    return _back(number, "walk-in", None, accept)
