"""The answer statement on the web app's path (rsvp.service.answer_alone) on PostgreSQL: it
records an answer, its history row and its confirmation mail together, or nothing at all and
says why; sessions with and without a seat limit, one statement each. Its lighter shape for a
session without a limit decides as the full one, and a limit an import adds is seen at once."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from newsletter.db import (
    AloneStatement,
    SessionStatement,
    close_async_connections,
    fetch_row_alone,
    session_scope,
    utcnow,
)
from newsletter.errors import InvalidStateError, NotFoundError
from newsletter.rsvp import service
from newsletter.rsvp.answer_repo import answer_statement
from newsletter.rsvp.decision_repo import Shape, parameters
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


# --- the statement's two shapes: the lighter one for a session without a seat limit -------

Step = tuple[int | None, Answer, int, timedelta, str | None]  # who (an index), answer, …


def _run_shapes(
    url: str,
    tmp_path: Path,
    shape: Shape,
    steps: list[Step],
    start: datetime,
    capacity: int | None = None,
) -> list[object]:
    """A session with one seat where R0 takes it and R3 waits, then imported again with
    ``capacity`` seats (None: no limit), and then ``steps`` decided by the statement of
    ``shape``: each returned row, then the answers, the history and the session's counters
    as stored."""
    _empty_tables(url)
    sid, people = setup_session(url, tmp_path, capacity=1, people=4)
    statements = {each: SessionStatement(answer_statement(each)) for each in Shape}

    def decide(
        shape: Shape, who: int | None, choice: Answer, guests: int, at: timedelta, note: str | None
    ) -> dict[str, object]:
        person = people[who] if who is not None else people[0] + 1000  # None: nobody
        values = parameters(sid, person, choice, guests, start + at, note)
        with session_scope(url) as db:
            row = statements[shape].first_row(db, values)
        assert row is not None
        return {name: value for name, value in row.items() if name != "updated_at"}

    seen: list[object] = [
        decide(Shape.ANY, 0, Answer.yes, 0, timedelta(0), None),
        decide(Shape.ANY, 3, Answer.yes, 0, timedelta(seconds=1), None),
    ]
    setup_session(url, tmp_path, capacity=capacity, people=0)  # the limit lifted or moved
    seen += [decide(shape, *step) for step in steps]
    with session_scope(url) as db:
        seen.append(
            [
                tuple(row)
                for row in db.execute(
                    select(
                        Rsvp.subscriber_id,
                        Rsvp.answer,
                        Rsvp.guests,
                        Rsvp.waitlisted,
                        Rsvp.answered_at,
                        Rsvp.queue_no,
                    ).order_by(Rsvp.subscriber_id)
                )
            ]
        )
        seen.append(
            [
                tuple(row)
                for row in db.execute(
                    select(
                        RsvpEvent.subscriber_id,
                        RsvpEvent.answer,
                        RsvpEvent.waitlisted,
                        RsvpEvent.at,
                        RsvpEvent.notice,
                        RsvpEvent.notice_error,
                    ).order_by(RsvpEvent.id)
                )
            ]
        )
        salon = db.get(SalonSession, sid)
        assert salon is not None
        seen.append((salon.seats_taken, salon.waiting, salon.queue_next, salon.capacity))
    return seen


def test_the_no_limit_shape_decides_every_answer_as_the_full_statement(
    postgres_url: str, tmp_path: Path
) -> None:
    """Every kind of answer, through each shape of the statement for a session without a
    seat limit: the same rows returned and the same rows stored (the lighter shape leaves
    out only what does nothing there)."""
    s = timedelta(seconds=1)
    steps: list[Step] = [
        (1, Answer.yes, 0, 2 * s, None),  # a first "yes"
        (1, Answer.yes, 0, 3 * s, None),  # a double click
        (1, Answer.yes, 1, 4 * s, None),  # with a guest
        (1, Answer.yes, 2, 5 * s, None),  # more guests than allowed
        (1, Answer.maybe, 0, 6 * s, None),
        (1, Answer.yes, 0, 7 * s, None),  # a new "yes": queues again
        (2, Answer.no, 0, 8 * s, None),
        (3, Answer.yes, 0, 9 * s, None),  # waited for a seat: the limit is gone, confirmed
        (0, Answer.maybe, 0, 10 * s, None),  # frees a seat: nobody to promote without a limit
        (None, Answer.yes, 0, 11 * s, None),  # a link to nobody
        (2, Answer.yes, 0, timedelta(days=4), None),  # after the start: closed
        (1, Answer.no, 0, 12 * s, "withdrawn: subscriber unsubscribed"),  # a departure
    ]
    start = utcnow()
    full = _run_shapes(postgres_url, tmp_path, Shape.ANY, steps, start)
    light = _run_shapes(postgres_url, tmp_path, Shape.NO_LIMIT, steps, start)
    assert light == full
    assert full[-1] == (1, 1, 3, None)  # counters kept only under a limit: as left then


def test_the_limited_shape_decides_every_answer_as_the_full_statement(
    postgres_url: str, tmp_path: Path
) -> None:
    """The same for a session with a seat limit: seats, guests, the waitlist's order and
    promotion inside the statement, through the shape that reads only a limited session."""
    s = timedelta(seconds=1)
    steps: list[Step] = [
        (1, Answer.yes, 1, 2 * s, None),  # two seats: waits behind R3
        (2, Answer.yes, 0, 3 * s, None),  # the second seat
        (2, Answer.yes, 0, 4 * s, None),  # a double click
        (1, Answer.yes, 0, 5 * s, None),  # fewer guests: keeps its place
        (0, Answer.no, 0, 6 * s, None),  # frees a seat: R3, first in line, is promoted
        (2, Answer.yes, 1, 7 * s, None),  # a guest: no seat for them, waits (last)
        (3, Answer.maybe, 0, 8 * s, None),  # frees a seat: R1 (one seat) before R2 (two)
        (None, Answer.yes, 0, 9 * s, None),  # a link to nobody
        (1, Answer.no, 0, 10 * s, "withdrawn: subscriber unsubscribed"),  # a departure
    ]
    start = utcnow()
    full = _run_shapes(postgres_url, tmp_path, Shape.ANY, steps, start, capacity=2)
    limited = _run_shapes(postgres_url, tmp_path, Shape.LIMITED, steps, start, capacity=2)
    assert limited == full
    assert full[-1] == (2, 0, 5, 2)


@pytest.mark.parametrize(("shape", "capacity"), [(Shape.NO_LIMIT, 1), (Shape.LIMITED, None)])
def test_a_shape_finds_no_session_of_the_other_kind(
    postgres_url: str, tmp_path: Path, shape: Shape, capacity: int | None
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=capacity, people=1)
    values = parameters(sid, people[0], Answer.yes, 0, utcnow())
    with session_scope(postgres_url) as db:
        row = SessionStatement(answer_statement(shape)).first_row(db, values)
    assert row is not None
    assert (row["session_found"], row["session_exists"], row["writes"]) == (False, True, False)
    assert stored(postgres_url) == ([], [])


def test_a_session_that_changes_kind_by_a_reimport_is_decided_by_its_new_kind(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web path answers a session with the statement for its kind (without a limit,
    then with one); after an import gives the session a limit, the next answer finds out in
    that same statement and is decided with seats counted (it waits), and the ones after it
    take the statement for a limited session; the same when an import lifts the limit."""
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=None, people=3)
    names = {AloneStatement(answer_statement(shape)).sql: shape.value for shape in Shape}
    ran: list[str] = []

    async def watched(url: str, statement: AloneStatement, values: dict[str, object]) -> object:
        ran.append(names.get(statement.sql, "other"))
        return await fetch_row_alone(url, statement, values)

    monkeypatch.setattr(service, "fetch_row_alone", watched)
    assert not quick(postgres_url, sid, people[0], Answer.yes).recorded.waitlisted
    ran.clear()
    assert not quick(postgres_url, sid, people[2], Answer.maybe).recorded.waitlisted
    assert ran == ["no_limit"]  # the session had no limit at its last answer
    ran.clear()
    setup_session(postgres_url, tmp_path, capacity=1, people=0)  # R0 holds the one seat
    second = quick(postgres_url, sid, people[1], Answer.yes).recorded
    assert (second.waitlisted, second.position) == (True, 1)
    assert ran == ["no_limit", "any"]
    ran.clear()
    third = quick(postgres_url, sid, people[2], Answer.yes).recorded
    assert (third.waitlisted, third.position) == (True, 2)
    assert ran == ["limited"]
    ran.clear()
    with session_scope(postgres_url) as db:
        salon = db.get(SalonSession, sid)
        assert salon is not None and (salon.seats_taken, salon.waiting) == (1, 2)
    setup_session(postgres_url, tmp_path, capacity=None, people=0)  # the limit is lifted
    fourth = quick(postgres_url, sid, people[1], Answer.yes).recorded  # waited: now seated
    assert (fourth.waitlisted, fourth.changed) == (False, True)
    assert ran == ["limited", "any"]
    ran.clear()
    assert quick(postgres_url, sid, people[2], Answer.yes).recorded.waitlisted is False
    assert ran == ["no_limit"]
