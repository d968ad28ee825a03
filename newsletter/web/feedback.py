"""The follow-up's feedback page: ``/feedback/{token}``.

GET shows the session, the one question (1-5) and a comment box, with the person's earlier
answer if any, and records nothing: mail scanners open every link. The button POSTs the
answer with a form token bound to the link's ids; a second answer replaces the first. The
token is ``Purpose.FEEDBACK`` with the session and subscriber ids (no address); a tampered
link is a 400 page, a session not over yet a 409, a form closed (60 days after the end) a
410. Posts are limited per client address like the sign-up form (see ``login_throttle``).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from newsletter.config import get_settings
from newsletter.db import session_scope, utcnow
from newsletter.rendering.session_view import view_of
from newsletter.rsvp import feedback, feedback_repo
from newsletter.tokens import Purpose
from newsletter.web.links import addressee, check_form_token, form_token, read_token
from newsletter.web.login_throttle import LoginThrottle
from newsletter.web.pages import page

router = APIRouter()
log = logging.getLogger(__name__)

# Answers per client address an hour, and from all clients together: a person answers once
# or twice; a whole room behind one NAT stays well under the first.
MAX_PER_CLIENT = 30
MAX_ALL = 2000
WINDOW_S = 60 * 60
throttle = LoginThrottle(max_failures=MAX_PER_CLIENT, window_s=WINDOW_S, max_failures_all=MAX_ALL)

LABELS = {1: "1 分 · 很差", 2: "2 分 · 较差", 3: "3 分 · 一般", 4: "4 分 · 不错", 5: "5 分 · 很好"}


def _ids(token: str) -> dict[str, int]:
    payload = read_token(Purpose.FEEDBACK, token, get_settings().secret_keys)
    if set(payload) != {"s", "u"}:
        raise HTTPException(400, "这个链接无效。")
    return payload


def _form_ids(ids: dict[str, int]) -> dict[str, int]:
    # Bound to the person, the session and this page: an RSVP form's token never passes here.
    return {"s": ids["s"], "u": ids["u"], "fb": 1}


def _refusal(closed: feedback.FeedbackClosed) -> HTTPException:
    return HTTPException(409 if isinstance(closed, feedback.FeedbackNotYet) else 410, str(closed))


def _render(
    token: str, ids: dict[str, int], *, done: bool = False, problem: str | None = None
) -> HTMLResponse:
    """The page: the form, with the person's answer so far (``done``: just recorded)."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        who = addressee(db, ids["s"], ids["u"])
        try:
            feedback.check_open(who.salon, utcnow())
        except feedback.FeedbackClosed as closed:
            raise _refusal(closed) from None
        current = feedback_repo.answer_of(db, who.salon.id, who.subscriber.id)
        view = view_of(who.salon, settings.base_url)
        name = who.subscriber.name
    return page(
        "feedback.html",
        400 if problem else 200,
        session=view,
        name=name,
        rating=current.rating if current else None,
        comment=(current.comment or "") if current else "",
        labels=LABELS,
        done=done,
        problem=problem,
        max_comment=feedback.MAX_COMMENT,
        form_token=form_token(_form_ids(ids)),
        action=f"/feedback/{token}",
    )


@router.get("/feedback/{token}", response_class=HTMLResponse)
def show(token: str) -> HTMLResponse:
    """The form; opening it records nothing."""
    return _render(token, _ids(token))


def _record(ids: dict[str, int], rating: int, comment: str) -> str | None:
    """Record the answer in one transaction; the reason it was refused, if it was."""
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        who = addressee(db, ids["s"], ids["u"])
        try:
            feedback.record_feedback(db, who.salon, who.subscriber.id, rating, comment)
        except feedback.FeedbackClosed as closed:
            raise _refusal(closed) from None
        except ValueError as bad:
            return str(bad)
    return None


@router.post("/feedback/{token}", response_class=HTMLResponse)
async def answer(
    token: str,
    request: Request,
    rating: Annotated[int, Form(ge=1, le=5)],
    csrf: Annotated[str, Form(max_length=400)],
    comment: Annotated[str, Form(max_length=4 * feedback.MAX_COMMENT)] = "",
) -> HTMLResponse:
    """Record (or replace) the person's answer; the page again, saying it was recorded."""
    ids = _ids(token)
    check_form_token(csrf, _form_ids(ids))
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait:
        log.warning("feedback refused: too many answers from one client address")
        refused = page(
            "error.html",
            429,
            title="请求过于频繁",
            message=f"这个网络提交的反馈太多了。请 {(wait + 59) // 60} 分钟后再试。",
        )
        refused.headers["Retry-After"] = str(wait)
        return refused
    throttle.failed(client)  # counted: every answer, whatever it did
    problem = await run_in_threadpool(_record, ids, rating, comment)
    return await run_in_threadpool(_render, token, ids, done=problem is None, problem=problem)
