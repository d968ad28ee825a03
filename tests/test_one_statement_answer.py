"""The answer statement on the web app's path (rsvp.service.answer_alone) on PostgreSQL: it
records an answer, its history row and its confirmation mail together, or nothing at all and
says why; sessions with and without a seat limit, one statement each."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from newsletter.db import close_async_connections, session_scope, utcnow
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp, RsvpEvent
from newsletter.rsvp.service import Answered, AnswersClosed, SubscriberNotActive, answer_alone
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber
from tests.conftest import _empty_tables
from tests.test_rsvp_service import setup_session


def quick(
    url: str,
    session_id: int,
    subscriber_id: int,
    answer: Answer,
    *,
    guests: int = 0,
    now: datetime | None = None,
) -> Answered:
    async def run() -> Answered:
        try:
            when = now or utcnow()
            return await answer_alone(url, session_id, subscriber_id, answer, guests, when)
        finally:
            await close_async_connections()

    # A thread of its own: the session's browser fixture keeps an event loop running here.
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, run()).result()


def stored(url: str) -> tuple[list[tuple[int, str]], list[tuple[int, str, str | None]]]:
    """The answers, and the history rows with their mails, in order."""
    with session_scope(url) as db:
        answers = db.execute(select(Rsvp.subscriber_id, Rsvp.answer).order_by(Rsvp.subscriber_id))
        history = db.execute(
            select(RsvpEvent.subscriber_id, RsvpEvent.answer, RsvpEvent.notice).order_by(
                RsvpEvent.id
            )
        )
        return [tuple(row) for row in answers], [tuple(row) for row in history]  # type: ignore[misc]


@pytest.mark.parametrize("capacity", [None, 5])
def test_an_answer_its_history_and_its_mail_are_recorded_together(
    postgres_url: str, tmp_path: Path, capacity: int | None
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=capacity, people=2)
    first = quick(postgres_url, sid, people[0], Answer.yes)
    assert first.recorded.changed and first.revision == 0
    again = quick(postgres_url, sid, people[0], Answer.yes)  # a double click
    assert not again.recorded.changed
    changed = quick(postgres_url, sid, people[0], Answer.no)
    assert changed.recorded.changed
    assert quick(postgres_url, sid, people[1], Answer.maybe, guests=1).recorded.guests == 1
    answers, history = stored(postgres_url)
    assert answers == [(people[0], "no"), (people[1], "maybe")]
    assert history == [
        (people[0], "yes", NoticeKind.confirmed.value),
        (people[0], "no", None),
        (people[1], "maybe", None),
    ]
    with session_scope(postgres_url) as db:
        salon = db.get(SalonSession, sid)
        assert salon is not None and first.updated_at == salon.updated_at
        assert salon.seats_taken == 0  # the seat was given back with the "no"
        due = db.scalar(select(func.count()).where(RsvpEvent.notice_due_at.is_not(None)))
    assert due == 1  # the confirmation mail waits in the outbox


def test_what_the_rules_refuse_records_nothing_and_says_why(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=3, people=1)
    with pytest.raises(InvalidStateError, match="at most 1 guests"):
        quick(postgres_url, sid, people[0], Answer.yes, guests=2)
    with pytest.raises(NotFoundError, match="subscriber"):
        quick(postgres_url, sid, people[0] + 1000, Answer.yes)
    with pytest.raises(NotFoundError, match="session"):
        quick(postgres_url, sid + 1000, people[0], Answer.yes)
    late = utcnow() + timedelta(days=4)  # past the start: closed
    with pytest.raises(AnswersClosed):
        quick(postgres_url, sid, people[0], Answer.yes, now=late)
    with session_scope(postgres_url) as db:
        db.execute(update(Subscriber).values(status="bounced"))
    with pytest.raises(SubscriberNotActive, match="bounced"):
        quick(postgres_url, sid, people[0], Answer.yes)
    with session_scope(postgres_url) as db:
        db.execute(update(Subscriber).values(status="active"))
        db.execute(update(SalonSession).values(cancelled=True))
    with pytest.raises(AnswersClosed):
        quick(postgres_url, sid, people[0], Answer.yes)
    assert stored(postgres_url) == ([], [])
