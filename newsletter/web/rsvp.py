"""RSVP pages. GET shows the session and the answer chosen and records nothing (scanners open
every link); a person's button press POSTs the answer with a form token bound to the link."""

from __future__ import annotations

import base64
import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from newsletter.config import get_settings
from newsletter.db import is_postgresql_url, session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.outages import is_unavailable
from newsletter.rendering.session_view import SessionView, known_view, view_of
from newsletter.rsvp import checkin
from newsletter.rsvp.models import Answer
from newsletter.rsvp.promotion import confirm_seat, seat_deadline
from newsletter.rsvp.service import (
    AnswersClosed,
    Recorded,
    answer_alone,
    closes_at,
    current_answer,
    record_answer,
)
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.models import SalonSession
from newsletter.tokens import Purpose
from newsletter.web.links import addressee, check_form_token, form_token, read_token
from newsletter.web.pages import page
from tasks.rsvp import notify_answers, would_notify

router = APIRouter()
log = logging.getLogger(__name__)

LABELS = {Answer.yes: "是，我会参加", Answer.maybe: "可能参加", Answer.no: "不参加"}


def _ids(token: str) -> dict[str, int]:
    payload = read_token(Purpose.RSVP, token, get_settings().secret_keys)
    if set(payload) != {"s", "u"}:
        raise HTTPException(400, "这个链接无效。")
    return payload


@router.get("/rsvp/{token}", response_class=HTMLResponse)
def show(token: str, answer: Annotated[Answer | None, Query()] = None) -> HTMLResponse:
    """The session, the answer the link chose, and one button to confirm it."""
    ids = _ids(token)
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        who = addressee(db, ids["s"], ids["u"])
        record = sessions_repo.record_of(who.salon)
        current = current_answer(db, who.salon.id, who.subscriber.id)
        view = view_of(who.salon, settings.base_url)
        closed = who.salon.cancelled or _closed(who.salon)
        registration = record.registration
        seat_confirm_by = seat_deadline(current, who.salon.timezone, utcnow())
        # A seat held for a promoted person is theirs once they confirm it: no code before.
        confirmed = bool(
            current
            and current.answer == Answer.yes
            and not current.waitlisted
            and seat_confirm_by is None
        )
        code = (
            checkin.make_code(settings.secret_keys, who.salon.number, who.subscriber.id)
            if confirmed
            else None
        )
    return page(
        "rsvp.html",
        session=view,
        name=who.subscriber.name,
        chosen=answer,
        current=current.answer if current else None,
        current_waitlisted=bool(current and current.waitlisted),
        labels=LABELS,
        answers=list(Answer),
        closed=closed,
        plus_ones=registration.plus_ones if registration else 0,
        form_token=form_token(ids),
        action=f"/rsvp/{token}",
        seat_confirm_by=seat_confirm_by,
        checkin_code=code,
        checkin_qr=_qr_data_url(code) if code else None,
    )


def _qr_data_url(code: str) -> str:
    """The check-in code's QR image inline (the page's policy allows data: images; no
    second request, nothing for a scanner of links to fetch)."""
    return "data:image/png;base64," + base64.b64encode(checkin.qr_png(code)).decode("ascii")


@router.post("/rsvp/{token}", response_class=HTMLResponse)
async def confirm(
    token: str,
    answer: Annotated[Answer, Form()],
    csrf: Annotated[str, Form(max_length=400)],
    guests: Annotated[int, Form(ge=0, le=10)] = 0,
) -> HTMLResponse:
    """Record the answer a person confirmed; the page states what was recorded.

    The burst after a send is made of these, so this one route runs on the event loop and,
    on PostgreSQL, reaches the database through the driver pool rather than a thread.
    """
    ids = _ids(token)
    check_form_token(csrf, ids)
    try:
        recorded, view = await _record(ids["s"], ids["u"], answer, guests)
    except AnswersClosed:
        raise HTTPException(409, "报名已截止，无法再修改答复。") from None
    except InvalidStateError as exc:  # e.g. more guests than the session allows
        raise HTTPException(400, f"无法记录这个答复：{exc}") from None
    await _notify(ids["s"], recorded)
    return page(
        "rsvp_done.html",
        session=view,
        recorded=recorded,
        label=LABELS[recorded.answer],
        change_url=f"/rsvp/{token}",
    )


@router.post("/rsvp/{token}/seat", response_class=HTMLResponse)
def confirm_promoted_seat(token: str, csrf: Annotated[str, Form(max_length=400)]) -> HTMLResponse:
    """A person promoted from the waitlist confirms the seat held for them (the button on
    their RSVP page); a GET of the page never does."""
    ids = _ids(token)
    check_form_token(csrf, ids)
    settings = get_settings()
    with session_scope(settings.database_url) as db:
        who = addressee(db, ids["s"], ids["u"])
        kept = confirm_seat(db, who.salon.id, who.subscriber.id, utcnow())
        view = view_of(who.salon, settings.base_url)
    if not kept:
        raise HTTPException(409, "没有需要确认的名额：可能已经确认过，或确认时间已过、名额已顺延。")
    return page("rsvp_seat.html", session=view, change_url=f"/rsvp/{token}")


async def _record(
    session_id: int, subscriber_id: int, answer: Answer, guests: int
) -> tuple[Recorded, SessionView]:
    """Record the answer; what was recorded, and the session as the page shows it.

    PostgreSQL: the answer statement on the driver pool, committed on its own (one round
    trip), and the page's view of the session from this process's cache (the first answer
    after an import reads the session once more, on the same pool). SQLite, which has no
    asyncio driver: the same rules in a worker thread's transaction.
    """
    settings = get_settings()
    url, base_url = settings.database_url, settings.base_url
    if not is_postgresql_url(url):
        return await run_in_threadpool(
            _record_in_thread, url, base_url, session_id, subscriber_id, answer, guests
        )
    try:
        answered = await answer_alone(url, session_id, subscriber_id, answer, guests, utcnow())
    except NotFoundError:
        raise HTTPException(404, "这个链接对应的活动或订阅者已不存在。") from None
    shown = known_view(session_id, answered.revision, answered.updated_at, base_url)
    if shown is None:  # the first answer since this version of the session was imported
        salon = await sessions_repo.load_alone(url, session_id)
        if salon is None:
            raise HTTPException(404, "这个链接对应的活动或订阅者已不存在。")
        shown = view_of(salon, base_url)
    return answered.recorded, shown


def _record_in_thread(
    url: str,
    base_url: str,
    session_id: int,
    subscriber_id: int,
    answer: Answer,
    guests: int,
) -> tuple[Recorded, SessionView]:
    with session_scope(url) as db:
        who = addressee(db, session_id, subscriber_id)
        recorded = record_answer(db, who.salon.id, who.subscriber.id, answer, guests=guests)
        return recorded, view_of(who.salon, base_url)


def _closed(salon: SalonSession) -> bool:
    return utcnow() >= closes_at(salon)


async def _notify(session_id: int, recorded: Recorded) -> None:
    """After the commit: have the mails this answer triggers sent (they wait in the outbox
    with the answer, so a broker that is down delays them and loses nothing)."""
    confirmed = recorded.answer == Answer.yes and not recorded.waitlisted
    if not recorded.changed or not (confirmed or recorded.waitlisted or recorded.promoted):
        return
    if not would_notify(session_id):  # most answers of a burst: a sender is already asked
        return
    try:
        # Off the event loop: the sender is handed to the embedded worker or published to the
        # broker (at most once per session per second), and a publish blocks while Redis
        # does not answer.
        await run_in_threadpool(notify_answers, session_id)
    except Exception as error:  # the answer is recorded; beat's sweep sends the mails later
        if not is_unavailable(error):
            log.exception("could not ask for the mails of session %s to be sent", session_id)
            return
        log.warning(
            "could not ask for the mails of session %s to be sent (%s); they wait in the outbox",
            session_id,
            type(error).__name__,
        )
