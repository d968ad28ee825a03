"""Migration 0006 gives a database with answers already recorded its seat counters and queue
places from those answers, so the first answer after the upgrade decides as before it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from newsletter.db import get_engine, session_scope
from newsletter.migrate import upgrade
from newsletter.rsvp.models import Answer
from newsletter.rsvp.service import record_answer
from newsletter.sessions.models import SalonSession
from tests.conftest import no_schema

STARTS = datetime.now(UTC) + timedelta(days=5)


def _seed_at_0005(url: str) -> None:
    upgrade(url, "0005")
    record = {"number": 7, "registration": {"capacity": 4, "plus_ones": 1}}
    with get_engine(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sessions (id, number, series, title, starts_at, ends_at, timezone,"
                " capacity, cancelled, revision, record, updated_at) VALUES (1, 7, 's', 't',"
                " :starts, :starts, 'Asia/Shanghai', 4, false, 0, :record, :starts)"
            ),
            {"starts": STARTS, "record": json.dumps(record)},
        )
        for person in range(1, 6):
            connection.execute(
                text(
                    "INSERT INTO subscribers (id, email, name, locale, status, created_at)"
                    " VALUES (:id, :email, 'x', 'zh-CN', 'active', :at)"
                ),
                {"id": person, "email": f"m{person}@example.org", "at": STARTS},
            )
        # Seated: 1 (with a guest) and 2; waiting, in this order: 4 then 3; 5 said maybe.
        rows = [
            (1, "yes", 1, False, 1),
            (2, "yes", 0, False, 2),
            (3, "yes", 0, True, 5),
            (4, "yes", 1, True, 4),
            (5, "maybe", 0, False, 3),
        ]
        for person, answer, guests, waitlisted, minute in rows:
            connection.execute(
                text(
                    "INSERT INTO rsvps (session_id, subscriber_id, answer, guests, waitlisted,"
                    " answered_at, updated_at) VALUES (1, :p, :a, :g, :w, :t, :t)"
                ),
                {
                    "p": person,
                    "a": answer,
                    "g": guests,
                    "w": waitlisted,
                    "t": STARTS - timedelta(days=3, minutes=-minute),
                },
            )


def test_counters_and_queue_places_come_from_the_answers(db_url: str) -> None:
    no_schema(db_url)
    try:
        _seed_at_0005(db_url)
        upgrade(db_url)
        with session_scope(db_url) as db:
            salon = db.get(SalonSession, 1)
            assert salon is not None
            assert (salon.plus_ones, salon.seats_taken, salon.waiting) == (1, 3, 2)
            # The seat left is for one person: 4 (a party of two) waits on, 3 moves up.
            freed = record_answer(db, 1, 5, Answer.no)
            assert freed.promoted == [3]
            back = record_answer(db, 1, 1, Answer.no)  # a party of two leaves: 4 fits
            assert back.promoted == [4]
            db.refresh(salon)
            assert (salon.seats_taken, salon.waiting, salon.queue_next) == (4, 0, 5)
    finally:
        no_schema(db_url)
        upgrade(db_url)
