"""Answers: idempotent, capacity with a waitlist, promotion on a "no", the deadline, races."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.db import get_sessionmaker, session_scope, utcnow
from newsletter.rsvp import repo
from newsletter.rsvp.models import Answer, Rsvp, RsvpEvent
from newsletter.rsvp.service import AnswersClosed, Recorded, record_answer
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber
from tests.conftest import _empty_tables

RECORD = """\
number: 90
series: 机器学习开发者沙龙
title: 容量测试
starts_at: {starts}
ends_at: {ends}
venue: {{mode: offline, name: 蒙民伟楼348室}}
registration: {{capacity: {capacity}, plus_ones: 1}}
talks: [{{kind: paper, title: A}}]
"""


def setup_session(
    url: str, tmp_path: Path, *, capacity: int | None, people: int
) -> tuple[int, list[int]]:
    starts = utcnow() + timedelta(days=3)
    path = tmp_path / "090.yaml"
    path.write_text(
        RECORD.format(
            starts=starts.isoformat(),
            ends=(starts + timedelta(hours=2)).isoformat(),
            capacity="null" if capacity is None else capacity,
        ),
        encoding="utf-8",
    )
    with session_scope(url) as db:
        import_records(db, [path], timezone="Asia/Shanghai")
        subscribers = [
            Subscriber(email=f"r{i}@example.org", name=f"R{i}", created_at=utcnow())
            for i in range(people)
        ]
        db.add_all(subscribers)
        db.flush()
        salon = sessions_repo.get_by_number(db, 90)
        assert salon is not None
        return salon.id, [s.id for s in subscribers]


def answer(
    url: str, session_id: int, subscriber_id: int, value: Answer, guests: int = 0
) -> Recorded:
    with session_scope(url) as db:
        return record_answer(db, session_id, subscriber_id, value, guests=guests)


def test_yes_past_capacity_waits_and_a_no_promotes_the_first(db_url: str, tmp_path: Path) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=2, people=5)
    assert not answer(db_url, sid, people[0], Answer.yes).waitlisted
    assert not answer(db_url, sid, people[1], Answer.yes).waitlisted
    third = answer(db_url, sid, people[2], Answer.yes)
    fourth = answer(db_url, sid, people[3], Answer.yes)
    assert (third.waitlisted, third.position) == (True, 1)
    assert (fourth.waitlisted, fourth.position) == (True, 2)
    freed = answer(db_url, sid, people[0], Answer.no)
    assert freed.promoted == [people[2]]
    with session_scope(db_url) as db:
        counts = repo.counts(db, sid)
        assert (counts.yes, counts.no, counts.waitlisted, counts.seats) == (2, 1, 1, 2)
        waiting = repo.get(db, sid, people[3])
        assert waiting is not None and repo.waitlist_position(db, waiting) == 1


def test_answering_again_is_idempotent_and_changes_are_kept(db_url: str, tmp_path: Path) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=10, people=1)
    first = answer(db_url, sid, people[0], Answer.maybe)
    again = answer(db_url, sid, people[0], Answer.maybe)
    assert first.changed and not again.changed
    changed = answer(db_url, sid, people[0], Answer.yes, guests=1)
    assert changed.changed and changed.guests == 1
    with session_scope(db_url) as db:
        assert repo.counts(db, sid).seats == 2


def test_guests_count_against_capacity_and_are_bounded(db_url: str, tmp_path: Path) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=3, people=3)
    assert not answer(db_url, sid, people[0], Answer.yes, guests=1).waitlisted
    assert answer(db_url, sid, people[1], Answer.yes, guests=1).waitlisted  # 2 + 2 > 3
    assert not answer(db_url, sid, people[2], Answer.yes).waitlisted  # 2 + 1 fits
    with pytest.raises(Exception, match="at most 1 guests"):
        answer(db_url, sid, people[2], Answer.yes, guests=2)


def test_answers_close_at_the_deadline(db_url: str, tmp_path: Path) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=3, people=1)
    with session_scope(db_url) as db, pytest.raises(AnswersClosed, match="closed"):
        record_answer(db, sid, people[0], Answer.yes, now=utcnow() + timedelta(days=4))


def test_concurrent_answers_never_overfill_the_last_seat(postgres_url: str, tmp_path: Path) -> None:
    _empty_tables(postgres_url)
    sid, people = setup_session(postgres_url, tmp_path, capacity=5, people=40)
    barrier = threading.Barrier(len(people))
    errors: list[BaseException] = []

    def say_yes(subscriber_id: int) -> None:
        try:
            barrier.wait(10)
            answer(postgres_url, sid, subscriber_id, Answer.yes)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=say_yes, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db: Session = get_sessionmaker(postgres_url)()
    try:
        counts = repo.counts(db, sid)
    finally:
        db.close()
    assert (counts.yes, counts.seats, counts.waitlisted) == (5, 5, 35)


def _history(url: str, session_id: int) -> list[tuple[int, str]]:
    with session_scope(url) as db:
        rows = db.execute(
            select(RsvpEvent.subscriber_id, RsvpEvent.answer)
            .where(RsvpEvent.session_id == session_id)
            .order_by(RsvpEvent.id)
        )
        return [(row[0], row[1]) for row in rows]


def test_without_a_seat_limit_each_change_is_kept_once(db_url: str, tmp_path: Path) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=None, people=2)
    assert answer(db_url, sid, people[0], Answer.maybe).changed
    assert not answer(db_url, sid, people[0], Answer.maybe).changed
    with session_scope(db_url) as db:
        before = repo.get(db, sid, people[0])
        assert before is not None
        first_answered = before.answered_at
    yes = answer(db_url, sid, people[0], Answer.yes, guests=1)
    assert (yes.changed, yes.waitlisted, yes.position, yes.guests) == (True, False, None, 1)
    assert not answer(db_url, sid, people[0], Answer.yes, guests=1).changed
    assert answer(db_url, sid, people[1], Answer.no).changed
    with session_scope(db_url) as db:
        counts = repo.counts(db, sid)
        assert (counts.yes, counts.maybe, counts.no, counts.seats) == (1, 0, 1, 2)
        now = repo.get(db, sid, people[0])
        assert now is not None and now.answered_at > first_answered  # a new "yes" queues anew
    assert _history(db_url, sid) == [
        (people[0], "maybe"),
        (people[0], "yes"),
        (people[1], "no"),
    ]


def test_racing_clicks_of_one_person_record_one_answer(db_url: str, tmp_path: Path) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=None, people=1)
    clicks = 12
    barrier = threading.Barrier(clicks)
    results: list[Recorded] = []
    errors: list[BaseException] = []

    def click() -> None:
        try:
            barrier.wait(10)
            results.append(answer(db_url, sid, people[0], Answer.yes))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=click) for _ in range(clicks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(result.changed for result in results) == 1
    with session_scope(db_url) as db:
        assert db.scalar(select(func.count()).select_from(Rsvp)) == 1
    assert _history(db_url, sid) == [(people[0], "yes")]


def test_a_long_waitlist_keeps_its_order_and_a_bigger_room_promotes(
    db_url: str, tmp_path: Path
) -> None:
    sid, people = setup_session(db_url, tmp_path, capacity=1, people=62)
    results = [answer(db_url, sid, person, Answer.yes) for person in people]
    assert [r.waitlisted for r in results] == [False] + [True] * 61
    assert [r.position for r in results[1:]] == list(range(1, 62))
    freed = answer(db_url, sid, people[0], Answer.no)
    assert freed.promoted == [people[1]]  # the first in line, not anyone further back
    assert answer(db_url, sid, people[61], Answer.yes).position == 60  # unchanged, moved up
    setup_session(db_url, tmp_path, capacity=3, people=0)  # the room grew: re-imported
    anyone = answer(db_url, sid, people[0], Answer.maybe)
    assert anyone.promoted == [people[2], people[3]]
    with session_scope(db_url) as db:
        counts = repo.counts(db, sid)
    assert (counts.yes, counts.waitlisted, counts.seats) == (3, 58, 3)
