"""The answer rules under concurrency, on a real PostgreSQL (and the same rules on SQLite):
parallel answers for the last seats never over-fill; the waitlist keeps the order in which
answers were recorded; a "no" promotes exactly the next person who fits; guests take seats;
a double click changes nothing; a departure frees the seat for the next active person.

The web app's path (``answer_alone``: the answer statement on the driver pool, committed on
its own) and the service's (``record_answer`` in a transaction of its own per answer, as the
CLI and SQLite take it) are both driven here from many connections at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from newsletter.db import close_async_connections, session_scope, utcnow
from newsletter.rsvp import repo
from newsletter.rsvp.models import Answer, Rsvp, RsvpEvent
from newsletter.rsvp.service import Recorded, answer_alone
from newsletter.sessions.models import SalonSession
from subscribers.models import Subscriber
from subscribers.service import unsubscribe
from tests.conftest import _empty_tables
from tests.test_rsvp_service import answer, setup_session


def web_answers(url: str, session_id: int, answers: list[tuple[int, Answer, int]]) -> list[Any]:
    """Every (subscriber, answer, guests) at once through the web app's path; each result is
    a Recorded or the exception raised."""

    async def run() -> list[Any]:
        try:
            return await asyncio.gather(
                *(
                    answer_alone(url, session_id, person, choice, guests, utcnow())
                    for person, choice, guests in answers
                ),
                return_exceptions=True,
            )
        finally:
            await close_async_connections()

    # A thread of its own: the session's browser fixture keeps an event loop running here.
    with ThreadPoolExecutor(max_workers=1) as thread:
        outcomes = thread.submit(asyncio.run, run()).result()
    return [getattr(outcome, "recorded", outcome) for outcome in outcomes]


def service_answers(url: str, session_id: int, answers: list[tuple[int, Answer, int]]) -> list[Any]:
    """Every answer at once, each in its own transaction from its own thread."""
    barrier = threading.Barrier(len(answers))

    def one(item: tuple[int, Answer, int]) -> Any:
        barrier.wait(30)
        try:
            return answer(url, session_id, item[0], item[1], item[2])
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=len(answers)) as pool:
        return list(pool.map(one, answers))


AnswerAll = Callable[[str, int, list[tuple[int, Answer, int]]], list[Any]]


def state(url: str, session_id: int) -> tuple[repo.Counts, int, int, list[int]]:
    """Counts, the seat and waiting counters, and the waitlist in its order."""
    with session_scope(url) as db:
        counts = repo.counts(db, session_id)
        salon = db.get(SalonSession, session_id)
        assert salon is not None
        waiting = list(
            db.scalars(
                select(Rsvp.subscriber_id)
                .where(Rsvp.session_id == session_id, Rsvp.waitlisted.is_(True))
                .order_by(Rsvp.queue_no, Rsvp.id)
            )
        )
        return counts, salon.seats_taken, salon.waiting, waiting


def answer_order(url: str, session_id: int) -> list[int]:
    """Whose "yes" was recorded in which order: the history rows, ids taken as each answer
    was decided."""
    with session_scope(url) as db:
        return list(
            db.scalars(
                select(RsvpEvent.subscriber_id)
                .where(RsvpEvent.session_id == session_id, RsvpEvent.answer == "yes")
                .order_by(RsvpEvent.id)
            )
        )


def _check_burst(url: str, sid: int, people: list[int], results: list[Any], seats: int) -> None:
    assert [r for r in results if not isinstance(r, Recorded)] == []
    counts, taken, waiting_count, waiting = state(url, sid)
    assert (counts.yes, counts.seats, taken) == (seats, seats, seats)  # never over-filled
    assert (counts.waitlisted, waiting_count) == (len(people) - seats, len(people) - seats)
    order = answer_order(url, sid)
    assert waiting == order[seats:]  # the waitlist is the order answers were recorded in
    by_person = {people[i]: r for i, r in enumerate(results)}
    # Each waiting person was told their place, and the places are the order of the line.
    assert [by_person[p].position for p in waiting] == list(range(1, len(waiting) + 1))


def test_parallel_answers_for_the_last_seats_never_overfill_on_the_web_path(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=5, people=60)
    results = web_answers(postgres_url, sid, [(p, Answer.yes, 0) for p in people])
    _check_burst(postgres_url, sid, people, results, seats=5)


def test_parallel_answers_in_transactions_never_overfill(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("postgresql"):
        _empty_tables(db_url)
    sid, people = setup_session(db_url, tmp_path, capacity=4, people=24)
    results = service_answers(db_url, sid, [(p, Answer.yes, 0) for p in people])
    _check_burst(db_url, sid, people, results, seats=4)


def test_a_no_promotes_exactly_the_next_person_while_others_answer(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=3, people=30)
    for person in people[:8]:  # 3 seated, 5 waiting in this order
        answer(postgres_url, sid, person, Answer.yes)
    # One seat frees while 22 new people say yes at the same moment.
    burst = [(people[0], Answer.no, 0)] + [(p, Answer.yes, 0) for p in people[8:]]
    results = web_answers(postgres_url, sid, burst)
    freed = results[0]
    assert isinstance(freed, Recorded) and freed.promoted == [people[3]]  # the first in line
    promoted_anyone = [r.promoted for r in results[1:] if isinstance(r, Recorded) and r.promoted]
    assert promoted_anyone == []  # exactly one person for one seat
    counts, taken, _, waiting = state(postgres_url, sid)
    assert (counts.yes, counts.seats, taken) == (3, 3, 3)
    assert waiting[:4] == people[4:8]  # those already waiting keep their places, in order
    assert waiting[4:] == [p for p in answer_order(postgres_url, sid) if p in set(people[8:])]


def test_guests_take_seats_under_concurrency(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("postgresql"):
        _empty_tables(db_url)
    sid, people = setup_session(db_url, tmp_path, capacity=5, people=10)  # plus_ones: 1
    run: AnswerAll = web_answers if db_url.startswith("postgresql") else service_answers
    results = run(db_url, sid, [(p, Answer.yes, 1) for p in people])
    assert all(isinstance(r, Recorded) for r in results)
    counts, taken, _, _ = state(db_url, sid)
    # Parties of two: two of them fit in five seats, the fifth seat stays free for a single.
    assert (counts.yes, counts.seats, taken, counts.waitlisted) == (2, 4, 4, 8)
    single = answer(db_url, sid, _extra(db_url), Answer.yes)
    assert not single.waitlisted  # someone alone still fits the seat that is left
    counts, taken, _, _ = state(db_url, sid)
    assert (counts.seats, taken) == (5, 5)


def _extra(url: str) -> int:
    """One more subscriber on the list."""
    with session_scope(url) as db:
        person = Subscriber(email="alone@example.org", name="独自", created_at=utcnow())
        db.add(person)
        db.flush()
        return person.id


def test_a_double_click_changes_nothing(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("postgresql"):
        _empty_tables(db_url)
    sid, people = setup_session(db_url, tmp_path, capacity=2, people=3)
    run: AnswerAll = web_answers if db_url.startswith("postgresql") else service_answers
    for person in people:
        clicks = run(db_url, sid, [(person, Answer.yes, 0)] * 8)
        assert [r.changed for r in clicks].count(True) == 1, clicks
    counts, taken, waiting_count, waiting = state(db_url, sid)
    assert (counts.yes, taken, counts.waitlisted, waiting_count) == (2, 2, 1, 1)
    assert waiting == [people[2]]
    with session_scope(db_url) as db:
        events = db.scalar(select(func.count()).select_from(RsvpEvent))
    assert events == 3  # one history row (and one mail) per person


def test_a_departure_frees_the_seat_for_the_next_active_person(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("postgresql"):
        _empty_tables(db_url)
    sid, people = setup_session(db_url, tmp_path, capacity=1, people=4)
    for person in people:
        answer(db_url, sid, person, Answer.yes)
    with session_scope(db_url) as db:  # the next in line leaves first: passed over
        unsubscribe(db, people[1], "unsubscribed by link (campaign 1)")
    with session_scope(db_url) as db:  # then the seated person leaves
        unsubscribe(db, people[0], "unsubscribed by link (campaign 1)")
    counts, taken, waiting_count, waiting = state(db_url, sid)
    assert (counts.yes, taken, waiting_count, waiting) == (1, 1, 1, [people[3]])
    with session_scope(db_url) as db:
        seated = repo.get(db, sid, people[2])
        assert seated is not None and (seated.answer, seated.waitlisted) == ("yes", False)
