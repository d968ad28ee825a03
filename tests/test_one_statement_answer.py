"""The one-statement answer (rsvp.unlimited.answer_open_session) on PostgreSQL: it records
an answer, its history row and its confirmation mail together, or nothing at all and leaves
the case to the service's full path."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from newsletter.db import close_async_connections, session_scope, utcnow
from newsletter.rsvp.models import Answer, NoticeKind, Rsvp, RsvpEvent
from newsletter.rsvp.unlimited import OpenAnswer, answer_open_session
from newsletter.sessions.models import SalonSession
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
) -> OpenAnswer | None:
    async def run() -> OpenAnswer | None:
        try:
            when = now or utcnow()
            return await answer_open_session(url, session_id, subscriber_id, answer, guests, when)
        finally:
            await close_async_connections()

    # A thread of its own: the session's browser fixture keeps an event loop running here.
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, run()).result()


def stored(url: str) -> tuple[list[tuple[int, str]], list[tuple[int, str, str | None]]]:
    """The answers, and the history rows with their mails, in order."""
    with session_scope(url) as session:
        answers = session.execute(
            select(Rsvp.subscriber_id, Rsvp.answer).order_by(Rsvp.subscriber_id)
        )
        history = session.execute(
            select(RsvpEvent.subscriber_id, RsvpEvent.answer, RsvpEvent.notice).order_by(
                RsvpEvent.id
            )
        )
        return [tuple(row) for row in answers], [tuple(row) for row in history]  # type: ignore[misc]


def test_an_answer_its_history_and_its_mail_are_recorded_together(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=None, people=2)
    first = quick(postgres_url, sid, people[0], Answer.yes)
    assert first is not None and first.changed and first.revision == 0
    again = quick(postgres_url, sid, people[0], Answer.yes)  # a double click
    assert again is not None and not again.changed
    changed = quick(postgres_url, sid, people[0], Answer.no)
    assert changed is not None and changed.changed
    assert quick(postgres_url, sid, people[1], Answer.maybe) is not None
    answers, history = stored(postgres_url)
    assert answers == [(people[0], "no"), (people[1], "maybe")]
    assert history == [
        (people[0], "yes", NoticeKind.confirmed.value),
        (people[0], "no", None),
        (people[1], "maybe", None),
    ]
    with session_scope(postgres_url) as session:
        salon = session.get(SalonSession, sid)
        assert salon is not None and first.updated_at == salon.updated_at
        due = session.scalar(select(func.count()).where(RsvpEvent.notice_due_at.is_not(None)))
    assert due == 1  # the confirmation mail waits in the outbox


def test_what_one_statement_cannot_decide_is_left_alone(
    postgres_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=3, people=1)
    assert quick(postgres_url, sid, people[0], Answer.yes) is None  # seats: the locked path
    with session_scope(postgres_url) as session:
        session.execute(update(SalonSession).values(capacity=None))
    assert quick(postgres_url, sid, people[0], Answer.yes, guests=1) is None  # guests allowed?
    assert quick(postgres_url, sid, people[0] + 1000, Answer.yes) is None  # nobody
    assert quick(postgres_url, sid + 1000, people[0], Answer.yes) is None  # no session
    late = utcnow() + timedelta(days=4)  # past the start: closed
    assert quick(postgres_url, sid, people[0], Answer.yes, now=late) is None
    with session_scope(postgres_url) as session:
        session.execute(update(SalonSession).values(cancelled=True))
    assert quick(postgres_url, sid, people[0], Answer.yes) is None
    assert stored(postgres_url) == ([], [])
    assert quick(sqlite_url, sid, people[0], Answer.yes) is None  # no asyncio driver
