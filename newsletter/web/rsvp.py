"""RSVP pages. GET shows the session and the answer chosen and records nothing (scanners open
every link); a person's button press POSTs the answer with a form token bound to the link."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from newsletter.config import get_settings
from newsletter.db import run_unit, session_scope, utcnow
from newsletter.errors import InvalidStateError
from newsletter.outages import is_unavailable
from newsletter.rendering.session_view import SessionView, known_view, view_of
from newsletter.rsvp.models import Answer
from newsletter.rsvp.service import (
    AnswersClosed,
    Recorded,
    closes_at,
    current_answer,
    record_answer,
)
from newsletter.rsvp.unlimited import answer_open_session
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
    with session_scope(settings.database_url) as session:
        who = addressee(session, ids["s"], ids["u"])
        record = sessions_repo.record_of(who.salon)
        current = current_answer(session, who.salon.id, who.subscriber.id)
        view = view_of(who.salon, settings.base_url)
        closed = who.salon.cancelled or _closed(who.salon)
        registration = record.registration
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
    )


@router.post("/rsvp/{token}", response_class=HTMLResponse)
async def confirm(
    token: str,
    answer: Annotated[Answer, Form()],
    csrf: Annotated[str, Form(max_length=400)],
    guests: Annotated[int, Form(ge=0, le=10)] = 0,
) -> HTMLResponse:
    """Record the answer a person confirmed; the page states what was recorded.

    The burst after a send is made of these, so this one route runs on the event loop and
    reaches the database through :func:`run_unit` rather than through a thread.
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


async def _record(
    session_id: int, subscriber_id: int, answer: Answer, guests: int
) -> tuple[Recorded, SessionView]:
    """Record the answer; what was recorded, and the session as the page shows it.

    Most answers of a burst are decided by one statement (see rsvp.unlimited); the others
    (seat limits, guests, SQLite, a closed session or a link to nobody) take the service's
    full path, which also raises what is wrong.
    """
    settings = get_settings()
    url, base_url = settings.database_url, settings.base_url

    def view(session: Session) -> SessionView:
        return view_of(addressee(session, session_id, subscriber_id).salon, base_url)

    quick = await answer_open_session(url, session_id, subscriber_id, answer, guests, utcnow())
    if quick is not None:
        recorded = Recorded(answer, 0, waitlisted=False, position=None, changed=quick.changed)
        shown = known_view(session_id, quick.revision, quick.updated_at, base_url)
        if shown is None:  # the first answer since this version of the session was imported
            shown = await run_unit(url, view)
        return recorded, shown

    def work(session: Session) -> tuple[Recorded, SessionView]:
        who = addressee(session, session_id, subscriber_id)
        recorded = record_answer(session, who.salon.id, who.subscriber.id, answer, guests=guests)
        return recorded, view_of(who.salon, base_url)

    return await run_unit(url, work)


def _closed(salon: SalonSession) -> bool:
    return utcnow() >= closes_at(salon)


async def _notify(session_id: int, recorded: Recorded) -> None:
    """After the commit: have the mails this answer triggers sent (they wait in the outbox
    with the answer, so a broker that is down delays them and loses nothing)."""
    confirmed = recorded.answer == Answer.yes and not recorded.waitlisted
    if not recorded.changed or not (confirmed or recorded.promoted):
        return
    if not would_notify(session_id):  # most answers of a burst: a sender is already asked
        return
    try:
        # Off the event loop either way: in-process the mails go out now; with a broker the
        # publish (at most one per session per second) blocks while Redis does not answer.
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
